//! The admin listener's metrics with real clients: after a known workload (N connections of
//! M bytes each, one trap, one idle timeout) the counters say exactly that, the histograms
//! count the calls, and the page passes `promtool check metrics` (Debian's prometheus
//! package, installed by scripts/install-deps.sh).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use support::{ShoalProcess, plugin_path, random_bytes, read_to_end, shoal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `GET path` on the admin listener: the status code and the body.
async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(admin).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let response =
        tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut stream)).await??;
    let response = String::from_utf8(response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of head")?;
    let status = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok((status, body.to_string()))
}

/// The samples of a metrics page, by name with labels as written.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn the_counters_move_as_a_known_workload_says_and_promtool_accepts_the_page()
-> anyhow::Result<()> {
    const CONNECTIONS: usize = 5;
    const BYTES: usize = 1000;
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\n\
         address = \"127.0.0.1:0\"\nplugin = \"{}\"\nidle_timeout = \"300ms\"\n",
        plugin_path("trap-on").display()
    );
    let mut server = ShoalProcess::serve_config("metrics", &config, 1).await?;
    let admin = server.admin_addr().await?;
    let addr = server.addrs["web"];

    for seed in 0..CONNECTIONS {
        let mut client = TcpStream::connect(addr).await?;
        let payload = random_bytes(BYTES, seed as u64 + 1);
        client.write_all(&payload).await?;
        let mut echoed = vec![0; BYTES];
        client.read_exact(&mut echoed).await?;
        ensure!(echoed == payload, "connection {seed}: wrong bytes");
    }
    let mut trapping = TcpStream::connect(addr).await?;
    trapping.write_all(b"trap\n").await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut trapping)).await?;
    let mut idle = TcpStream::connect(addr).await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut idle)).await?;
    drop((trapping, idle));

    // The connections are counted when they end, and leave the open gauge when their
    // sockets close: wait until all seven have.
    let (page, values) = metrics_once(admin, |values| {
        let ended: f64 = values
            .iter()
            .filter(|(name, _)| name.starts_with("shoal_connections_ended_total{listener=\"web\""))
            .map(|(_, value)| value)
            .sum();
        let open = values.get("shoal_connections_open{listener=\"web\"}");
        ended >= 7.0 && open == Some(&0.0)
    })
    .await?;
    let value = |name: &str| values.get(name).copied().unwrap_or(f64::NAN);
    assert_eq!(
        value("shoal_connections_accepted_total{listener=\"web\"}"),
        7.0,
        "{page}"
    );
    assert_eq!(
        value("shoal_connections_open{listener=\"web\"}"),
        0.0,
        "{page}"
    );
    assert_eq!(
        value("shoal_connections_ended_total{listener=\"web\",reason=\"client-closed\"}"),
        CONNECTIONS as f64,
        "{page}"
    );
    assert_eq!(
        value("shoal_connections_ended_total{listener=\"web\",reason=\"trap\"}"),
        1.0
    );
    assert_eq!(
        value("shoal_connections_ended_total{listener=\"web\",reason=\"limit:idle_timeout\"}"),
        1.0
    );
    assert_eq!(
        value("shoal_limit_hits_total{listener=\"web\",limit=\"idle_timeout\"}"),
        1.0
    );
    assert_eq!(value("shoal_guest_faults_total{listener=\"web\"}"), 1.0);
    assert_eq!(
        value("shoal_received_bytes_total{listener=\"web\"}"),
        (CONNECTIONS * BYTES + 5) as f64
    );
    assert_eq!(
        value("shoal_sent_bytes_total{listener=\"web\"}"),
        (CONNECTIONS * BYTES) as f64
    );
    // Every connection's init and close (but the trapped one's close) were timed.
    assert_eq!(
        value("shoal_guest_call_duration_seconds_count{listener=\"web\",export=\"init\"}"),
        7.0
    );
    assert_eq!(
        value("shoal_guest_call_duration_seconds_count{listener=\"web\",export=\"close\"}"),
        6.0
    );
    assert!(
        value("shoal_guest_call_duration_seconds_count{listener=\"web\",export=\"handle\"}")
            >= (CONNECTIONS + 1) as f64
    );
    assert_eq!(
        value("shoal_instantiation_duration_seconds_count{listener=\"web\"}"),
        7.0
    );
    assert!(
        page.lines().any(|line| line.starts_with(
            "shoal_plugin_version_info{listener=\"web\",plugin=\"trap-on\",version=\"1\",sha256=\""
        ) && line.ends_with(",current=\"true\"} 1")),
        "{page}"
    );

    promtool_accepts(&page).await?;

    let (status, _) = get(admin, "/nothing-here").await?;
    assert_eq!(status, 404);
    server.terminate().await?;
    Ok(())
}

/// `promtool check metrics` (Debian's prometheus package, installed by
/// scripts/install-deps.sh) passes `page`.
async fn promtool_accepts(page: &str) -> anyhow::Result<()> {
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian's prometheus package; scripts/install-deps.sh installs it)")?;
    let mut stdin = promtool.stdin.take().context("stdin")?;
    stdin.write_all(page.as_bytes()).await?;
    drop(stdin);
    let checked = promtool.wait_with_output().await?;
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{page}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

/// The counters of a metrics page once they satisfy `settled` (they move when connections
/// end, a moment after the client sees it); the last page read if they never do.
async fn metrics_once(
    admin: SocketAddr,
    settled: impl Fn(&HashMap<String, f64>) -> bool,
) -> anyhow::Result<(String, HashMap<String, f64>)> {
    let mut page = String::new();
    for _ in 0..100 {
        let (status, body) = get(admin, "/metrics").await?;
        ensure!(status == 200, "GET /metrics: {status}");
        page = body;
        if settled(&samples(&page)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let values = samples(&page);
    Ok((page, values))
}

#[tokio::test]
async fn mailbox_counters_count_messages_delivered_refused_and_overflowed() -> anyhow::Result<()> {
    // One message per mailbox, 64 bytes at most: easy to fill, easy to exceed.
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"post\"\n\
         address = \"127.0.0.1:0\"\nplugin = \"{}\"\nmailbox_messages = 1\n\
         mailbox_bytes = 64\n",
        plugin_path("courier").display()
    );
    let mut server = ShoalProcess::serve_config("mailbox-metrics", &config, 1).await?;
    let admin = server.admin_addr().await?;
    let addr = server.addrs["post"];
    let mut alice = BufReader::new(TcpStream::connect(addr).await?);
    let mut bob = BufReader::new(TcpStream::connect(addr).await?);
    let bob_id = ask(&mut bob, "id").await?;

    // Delivered: one message, which bob receives.
    assert_eq!(ask(&mut alice, &format!("to {bob_id} hello")).await?, "ok");
    let alice_id = ask(&mut alice, "id").await?;
    assert_eq!(next_line(&mut bob).await?, format!("{alice_id}: hello"));
    // Refused: to nobody, and a payload larger than a whole mailbox.
    let to_nobody = ask(&mut alice, "to 424242 x").await?;
    assert_eq!(to_nobody, "error: no-such-connection");
    let too_large = ask(&mut alice, &format!("to {bob_id} {}", "x".repeat(100))).await?;
    assert_eq!(too_large, "error: too-large");
    // Overflowed: bob sends itself two messages in one call. The first fills its mailbox,
    // which it cannot drain while in the call, and a sender cannot wait on itself: the second
    // is refused, bob's mailbox overflows, and bob ends after handling the first.
    bob.get_mut()
        .write_all(format!("to {bob_id} one\nto {bob_id} two\n").as_bytes())
        .await?;
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(10), bob.read_to_string(&mut rest)).await??;
    assert_eq!(rest, format!("ok\nerror: mailbox-full\n{bob_id}: one\n"));

    let (page, values) = metrics_once(admin, |values| {
        values.get("shoal_connections_ended_total{listener=\"post\",reason=\"limit:mailbox\"}")
            == Some(&1.0)
    })
    .await?;
    let value = |name: &str| values.get(name).copied().unwrap_or(f64::NAN);
    let refused = |reason: &str| {
        value(&format!(
            "shoal_mailbox_messages_refused_total{{listener=\"post\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(
        value("shoal_mailbox_messages_delivered_total{listener=\"post\"}"),
        2.0,
        "{page}"
    );
    assert_eq!(refused("no-such-connection"), 1.0, "{page}");
    assert_eq!(refused("too-large"), 1.0, "{page}");
    assert_eq!(refused("mailbox-full"), 1.0, "{page}");
    assert_eq!(
        value("shoal_mailbox_overflows_total{listener=\"post\"}"),
        1.0
    );
    assert_eq!(
        value("shoal_mailbox_send_waits_total{listener=\"post\"}"),
        0.0
    );
    assert_eq!(
        value(
            "shoal_limit_hits_total{listener=\"post\",limit=\"mailbox_messages / mailbox_bytes\"}"
        ),
        1.0,
        "{page}"
    );
    promtool_accepts(&page).await?;

    let (status, body) = get(admin, "/status.json").await?;
    ensure!(status == 200, "GET /status.json: {status}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    let messages = &status["listeners"][0]["messages"];
    assert_eq!(messages["delivered"], 2, "{body}");
    assert_eq!(messages["refused"]["mailbox-full"], 1, "{body}");
    assert_eq!(messages["overflowed"], 1, "{body}");
    assert_eq!(status["totals"]["messages_refused"], 3, "{body}");
    drop(alice);
    server.terminate().await?;
    Ok(())
}

/// Send `command` as a line and read the one-line answer.
async fn ask(client: &mut BufReader<TcpStream>, command: &str) -> anyhow::Result<String> {
    client
        .get_mut()
        .write_all(format!("{command}\n").as_bytes())
        .await?;
    next_line(client).await
}

/// The next line from the server, without its end.
async fn next_line(client: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_line(&mut line)).await??;
    ensure!(line.ends_with('\n'), "the connection ended: {line:?}");
    line.pop();
    Ok(line)
}

/// Run headless Chromium (Debian's package, installed by scripts/install-deps.sh) on `url`
/// with `args`; its standard output.
async fn chromium(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let profile = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-profile-{}", std::process::id()));
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("chromium")
            // As root, in a machine without a network: no sandbox, no GPU, and none of the
            // background connections a closed network refuses.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("chromium did not finish within 60 s")?
    .context("chromium (Debian's package; scripts/install-deps.sh installs it)")?;
    ensure!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn the_admin_page_status_and_shoal_status_show_each_listener_and_its_connections()
-> anyhow::Result<()> {
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"chat\"\naddress = \"127.0.0.1:0\"\nplugin = \"{}\"\n\n\
         [[listener]]\nname = \"echo\"\naddress = \"127.0.0.1:0\"\nplugin = \"{}\"\n",
        plugin_path("chat").display(),
        plugin_path("trap-on").display()
    );
    let mut server = ShoalProcess::serve_config("admin-page", &config, 2).await?;
    let admin = server.admin_addr().await?;
    // A member of the chat holds its connection; a client of the echo makes it trap.
    let mut member = tokio::io::BufReader::new(TcpStream::connect(server.addrs["chat"]).await?);
    assert!(
        support::read_line(&mut member)
            .await?
            .starts_with("* welcome")
    );
    let mut trapping = TcpStream::connect(server.addrs["echo"]).await?;
    trapping.write_all(b"trap\n").await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut trapping)).await?;

    let (status, json) = get(admin, "/status.json").await?;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json)?;
    let chat = &json["listeners"][0];
    assert_eq!(chat["name"], "chat");
    assert_eq!(chat["connections_open"], 1, "{json}");
    assert_eq!(chat["plugin"], "chat");
    assert_eq!(chat["version"], 1);
    assert_eq!(chat["address"], server.addrs["chat"].to_string(), "{json}");
    assert_eq!(json["recent"][0]["listener"], "echo", "{json}");
    assert_eq!(json["recent"][0]["ending"], "trap", "{json}");

    // The page, as a browser renders it.
    let url = format!("http://{admin}/");
    let dom = chromium(&url, &["--virtual-time-budget=3000", "--dump-dom"]).await?;
    assert!(dom.contains("<tr data-listener=\"chat\">"), "{dom}");
    assert!(
        dom.contains("data-field=\"connections_open\">1<"),
        "the chat's live connection is not shown: {dom}"
    );
    assert!(dom.contains("chat v1"), "{dom}");
    assert!(
        dom.contains(">trap<"),
        "the trap is not among the recent faults: {dom}"
    );
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-{}.png", std::process::id()));
    chromium(
        &url,
        &[
            "--virtual-time-budget=3000",
            "--window-size=1280,640",
            &format!("--screenshot={}", screenshot.display()),
        ],
    )
    .await?;
    let png = std::fs::read(&screenshot)?;
    ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    // `SHOAL_UPDATE_SCREENSHOT=1 cargo test --test admin` refreshes the README's picture.
    if std::env::var_os("SHOAL_UPDATE_SCREENSHOT").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin.png");
        std::fs::write(docs, &png)?;
    }

    // `shoal status` prints the same as a table.
    let (ok, table, stderr) = shoal(&["status", "--admin", &admin.to_string()]).await?;
    ensure!(ok, "{stderr}");
    let chat_row = table
        .lines()
        .find(|line| line.starts_with("chat "))
        .with_context(|| format!("no chat row in {table}"))?;
    let cells: Vec<&str> = chat_row.split_whitespace().collect();
    assert_eq!(cells[1], server.addrs["chat"].to_string(), "{table}");
    assert_eq!(&cells[2..4], ["chat", "v1"], "{table}");
    assert_eq!(cells[4], "1", "one open connection: {table}");
    assert!(table.contains("recent faults and limit hits:"), "{table}");

    drop(member);
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn shoal_status_names_an_admin_listener_that_does_not_answer() -> anyhow::Result<()> {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (ok, _, stderr) = shoal(&["status", "--admin", &port.to_string()]).await?;
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot reach the admin listener at {port}")),
        "{stderr}"
    );
    Ok(())
}

/// `shoal ARGS…` against the admin listener `admin` with the token in `token_file`: the
/// subcommand first (`deploy`, `rollback`), then its arguments.
async fn change(
    admin: &str,
    token_file: &str,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let (command, rest) = args.split_first().context("a subcommand")?;
    let mut full = vec![*command, "--admin", admin, "--token-file", token_file];
    full.extend_from_slice(rest);
    shoal(&full).await
}

/// One connection's round trip through the echo, old or new version: `Some(true)` when the
/// new version (which greets `v2`) served it, `None` on any failure.
async fn round_trip(addr: SocketAddr) -> Option<bool> {
    let attempt = async {
        let mut client = TcpStream::connect(addr).await.ok()?;
        client.write_all(b"ping\n").await.ok()?;
        client.shutdown().await.ok()?;
        let answer = read_to_end(&mut client).await.ok()?;
        match answer.as_slice() {
            b"ping\n" => Some(false),
            b"v2\nping\n" => Some(true),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_deploy_swaps_under_load_without_a_failed_connection_and_needs_the_token()
-> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("admin.token");
    std::fs::write(&token, "7f3a9c0e5b2d4f6a8c1e3b5d7f9a2c4e\n")?;
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "00000000000000000000000000000000\n")?;
    let broken = dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0 this is not a component")?;
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n\
         [[listener]]\nname = \"echo\"\naddress = \"127.0.0.1:0\"\nplugin = \"{}\"\n",
        token.display(),
        plugin_path("echo").display()
    );
    let mut server = ShoalProcess::serve_config("deploy", &config, 1).await?;
    let admin = server.admin_addr().await?.to_string();
    let addr = server.addrs["echo"];
    let (token, wrong, broken) = (
        token.display().to_string(),
        wrong.display().to_string(),
        broken.display().to_string(),
    );
    let v2 = plugin_path("echo-v2").display().to_string();

    // Refused: without a token, with a wrong one, and a plugin that is not one.
    let (ok, _, stderr) = shoal(&["deploy", "--admin", &admin, "echo", &v2]).await?;
    assert!(!ok && stderr.contains("no token"), "{stderr}");
    let (ok, _, stderr) = change(&admin, &wrong, &["deploy", "echo", &v2]).await?;
    assert!(
        !ok && stderr.contains("refused (401): the bearer token is wrong"),
        "{stderr}"
    );
    let (ok, _, stderr) = change(&admin, &token, &["deploy", "echo", &broken]).await?;
    assert!(!ok && stderr.contains("refused (422)"), "{stderr}");
    assert!(
        stderr.contains("broken.wasm"),
        "the refusal names the upload: {stderr}"
    );
    let (ok, _, stderr) = change(&admin, &token, &["deploy", "nobody", &v2]).await?;
    assert!(!ok && stderr.contains("refused (404)"), "{stderr}");
    assert_eq!(
        round_trip(addr).await,
        Some(false),
        "the first version still serves"
    );

    // Under load: clients connect, echo and leave all through the deploy.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        load.push(tokio::spawn(async move {
            let (mut served, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match round_trip(addr).await {
                    Some(_) => served += 1,
                    None => failed += 1,
                }
            }
            (served, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, stdout, stderr) = change(&admin, &token, &["deploy", "echo", &v2]).await?;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("listener echo: version 2 (echo-v2.wasm, sha256 "),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut served, mut failed) = (0, 0);
    for task in load {
        let (s, f) = task.await?;
        served += s;
        failed += f;
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed",
        served + failed
    );
    assert!(served > 0);
    assert_eq!(round_trip(addr).await, Some(true), "the new version serves");

    // Rollback: the first version again, once.
    let (ok, stdout, stderr) = change(&admin, &token, &["rollback", "echo"]).await?;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("listener echo: version 1 "), "{stdout}");
    assert_eq!(round_trip(addr).await, Some(false));
    let (ok, _, stderr) = change(&admin, &token, &["rollback", "echo"]).await?;
    assert!(!ok && stderr.contains("refused (409)"), "{stderr}");
    assert!(
        stderr.contains("no earlier version to roll back to"),
        "{stderr}"
    );

    // An upload past the size limit is refused before it is all read.
    let stream = TcpStream::connect(&admin).await?;
    let size = 65usize << 20;
    let head = format!(
        "POST /listeners/echo/deploy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer 7f3a9c0e5b2d4f6a8c1e3b5d7f9a2c4e\r\nContent-Length: {size}\r\n\r\n"
    );
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await?;
    let upload = tokio::spawn(async move {
        // The server may close before taking it all.
        let _ = writer.write_all(&vec![0u8; size]).await;
    });
    let answer = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut reader)).await??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    upload.abort();
    assert_eq!(round_trip(addr).await, Some(false), "nothing changed");
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn an_admin_listener_without_a_token_takes_no_change() -> anyhow::Result<()> {
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"echo\"\n\
         address = \"127.0.0.1:0\"\nplugin = \"{}\"\n",
        plugin_path("echo").display()
    );
    let mut server = ShoalProcess::serve_config("no-token", &config, 1).await?;
    let admin = server.admin_addr().await?;
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(
            b"POST /listeners/echo/rollback HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
              Authorization: Bearer 0123456789abcdef0123\r\nContent-Length: 0\r\n\r\n",
        )
        .await?;
    let answer = String::from_utf8(read_to_end(&mut stream).await?)?;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("give it a token"), "{answer}");
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn an_admin_listener_reachable_from_elsewhere_asks_the_token_for_every_page()
-> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("open-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("admin.token");
    std::fs::write(&token, "5e8b2a7c9d1f3e6a4b0c8d2f7a9e1c3b\n")?;
    // Bound to every address: not loopback, though this test reaches it through one.
    let config = format!(
        "[admin]\naddress = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n\n[[listener]]\nname = \"echo\"\n\
         address = \"127.0.0.1:0\"\nplugin = \"{}\"\n",
        token.display(),
        plugin_path("echo").display()
    );
    let mut server = ShoalProcess::serve_config("open-admin", &config, 1).await?;
    let admin = server.admin_addr().await?;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin.port()));
    let (status, _) = get(admin, "/metrics").await?;
    assert_eq!(status, 401);
    let (ok, _, stderr) = shoal(&["status", "--admin", &admin.to_string()]).await?;
    assert!(!ok && stderr.contains("401"), "{stderr}");
    let token = token.display().to_string();
    let (ok, stdout, stderr) = shoal(&[
        "status",
        "--admin",
        &admin.to_string(),
        "--token-file",
        &token,
    ])
    .await?;
    assert!(ok, "{stderr}");
    assert!(
        stdout.lines().any(|line| line.starts_with("echo ")),
        "{stdout}"
    );
    server.terminate().await?;
    Ok(())
}
