//! The `shoal` command as users run it: `check` verdicts and exit codes, `serve` printing its
//! bound address, serving the bundled echo plugin, and stopping gracefully on SIGTERM.

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::Context;
use support::{plugin_path, read_line, read_to_end};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// The `shoal` command, with a compile cache folder of this test process's own (through
/// `XDG_CACHE_HOME`, the default's root), so no test sees what an earlier run cached. It is
/// under cargo's temporary folder for tests, which `cargo clean` empties.
fn shoal_command() -> Command {
    let cache_root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("shoal-cli-cache-{}", std::process::id()));
    let mut command = Command::new(SHOAL);
    command
        .env("XDG_CACHE_HOME", cache_root)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn shoal(args: &[&str]) -> anyhow::Result<Output> {
    let run = shoal_command().args(args).output();
    Ok(tokio::time::timeout(Duration::from_secs(60), run).await??)
}

/// Start `shoal serve` on port 0 and read the address it prints when ready.
async fn serve(args: &[&str]) -> anyhow::Result<(Child, std::net::SocketAddr)> {
    start_serve(args, Stdio::null()).await
}

/// Start `shoal serve` on port 0 with its log going to `stderr`, and read the address it
/// prints when ready.
async fn start_serve(
    args: &[&str],
    stderr: Stdio,
) -> anyhow::Result<(Child, std::net::SocketAddr)> {
    let mut child = shoal_command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .context("shoal serve did not print its address")??;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line: {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

async fn terminate(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    let pid = child.id().context("still running")?.to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await?;
    anyhow::ensure!(killed.success(), "kill -TERM failed");
    Ok(tokio::time::timeout(Duration::from_secs(20), child.wait()).await??)
}

#[tokio::test]
async fn check_accepts_a_plugin() -> anyhow::Result<()> {
    let echo = plugin_path("echo");
    let output = shoal(&["check", echo.to_str().context("utf-8 path")?]).await?;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("ok: echo implements"), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn check_names_what_a_wrong_world_component_is_missing() -> anyhow::Result<()> {
    let wrong = plugin_path("wrong-world");
    let output = shoal(&["check", wrong.to_str().context("utf-8 path")?]).await?;
    assert!(!output.status.success(), "must fail: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not export `shoal:plugin/handler@0.2.0` (nor its 0.1.0 version)"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn check_and_serve_refuse_a_file_that_is_not_wasm() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("shoal-not-wasm-{}.wasm", std::process::id()));
    std::fs::write(&path, "this is not wasm\n")?;
    let path_text = path.to_str().context("utf-8 path")?;
    let check = shoal(&["check", path_text]).await?;
    let serve = shoal(&["serve", "--listen", "127.0.0.1:0", path_text]).await?;
    std::fs::remove_file(&path)?;
    for output in [check, serve] {
        assert!(!output.status.success(), "must fail: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is not a WebAssembly file"), "{stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn serve_without_a_plugin_echoes_and_stops_on_sigterm() -> anyhow::Result<()> {
    let (mut child, addr) = serve(&[]).await?;
    let mut client = TcpStream::connect(addr).await?;
    client.write_all(b"bundled echo\n").await?;
    let mut reply = [0u8; 13];
    client.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"bundled echo\n");
    let status = terminate(&mut child).await?;
    assert!(status.success(), "graceful exit: {status:?}");
    assert!(
        read_to_end(&mut client).await?.is_empty(),
        "closed at shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_gives_open_connections_their_shutdown_close() -> anyhow::Result<()> {
    let greeter = plugin_path("greeter");
    let (mut child, addr) = serve(&[greeter.to_str().context("utf-8 path")?]).await?;
    let mut reader = BufReader::new(TcpStream::connect(addr).await?);
    let greeting = read_line(&mut reader).await?;
    assert!(greeting.starts_with("hello "), "{greeting}");
    let status = terminate(&mut child).await?;
    assert!(status.success(), "graceful exit: {status:?}");
    assert_eq!(read_line(&mut reader).await?, "bye (shutdown)");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "refused after exit"
    );
    Ok(())
}

#[tokio::test]
async fn serve_native_echo_runs_the_baseline() -> anyhow::Result<()> {
    let (mut child, addr) = serve(&["--native-echo"]).await?;
    let mut client = TcpStream::connect(addr).await?;
    client.write_all(b"native\n").await?;
    let mut reply = [0u8; 7];
    client.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"native\n");
    let status = terminate(&mut child).await?;
    assert!(status.success(), "graceful exit: {status:?}");
    Ok(())
}

#[tokio::test]
async fn max_connections_holds_the_next_client_until_one_leaves() -> anyhow::Result<()> {
    let greeter = plugin_path("greeter");
    let greeter = greeter.to_str().context("utf-8 path")?;
    let (mut child, addr) = serve(&["--max-connections", "2", greeter]).await?;
    let mut first = BufReader::new(TcpStream::connect(addr).await?);
    let mut second = BufReader::new(TcpStream::connect(addr).await?);
    assert!(read_line(&mut first).await?.starts_with("hello "));
    assert!(read_line(&mut second).await?.starts_with("hello "));
    // The third client is accepted by the kernel but not served while two are open.
    let mut third = BufReader::new(TcpStream::connect(addr).await?);
    let waiting = tokio::time::timeout(Duration::from_millis(300), read_line(&mut third)).await;
    assert!(waiting.is_err(), "served past the limit: {waiting:?}");
    drop(first);
    assert!(read_line(&mut third).await?.starts_with("hello "));
    assert!(terminate(&mut child).await?.success());
    Ok(())
}

#[tokio::test]
async fn serve_names_an_invalid_option() -> anyhow::Result<()> {
    let output = shoal(&["serve", "--listen", "127.0.0.1:0", "--max-connections", "0"]).await?;
    assert!(!output.status.success(), "must fail: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_connections"), "{stderr}");
    Ok(())
}

/// Write a config file for this test process and return its path.
fn config_file(name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("shoal-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text)?;
    Ok(path)
}

#[tokio::test]
async fn serve_config_runs_every_listener_of_the_file() -> anyhow::Result<()> {
    let plugins = plugin_path("echo");
    let plugins = plugins.parent().context("plugins folder")?.display();
    let config = format!(
        r#"
        [[listener]]
        name = "echo"
        address = "127.0.0.1:0"
        plugin = "{plugins}/echo.wasm"

        [[listener]]
        name = "chat"
        address = "127.0.0.1:0"
        plugin = "{plugins}/chat.wasm"
        memory_limit = "8MiB"
        "#
    );
    let server = support::ShoalProcess::serve_config("two-listeners", &config, 2).await?;
    let mut echo = TcpStream::connect(server.addrs["echo"]).await?;
    echo.write_all(b"tenant one\n").await?;
    let mut reply = [0u8; 11];
    echo.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"tenant one\n");
    let mut chat = BufReader::new(TcpStream::connect(server.addrs["chat"]).await?);
    assert!(read_line(&mut chat).await?.starts_with("* welcome"));
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn serve_config_names_the_listener_and_field_at_fault() -> anyhow::Result<()> {
    let echo = plugin_path("echo");
    let echo = echo.display();
    let cases = [
        (
            "typo",
            format!(
                "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"{echo}\"\nidel_timeout = \"5s\"\n"
            ),
            "idel_timeout",
        ),
        (
            "zero",
            format!(
                "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"{echo}\"\npool_size = 0\n"
            ),
            "listener `a`: invalid `pool_size`: must be between 1 and 1024",
        ),
        (
            "duration",
            format!(
                "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"{echo}\"\ncpu_budget_per_call = \"fast\"\n"
            ),
            "is not a duration",
        ),
        (
            "memory",
            format!(
                "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"{echo}\"\nmemory_limit = \"64KiB\"\n"
            ),
            "listener `a`: memory_limit (64KiB) is too small for echo: it needs 192KiB",
        ),
    ];
    for (name, text, expected) in cases {
        let path = config_file(name, &text)?;
        let output = shoal(&["serve", "--config", path.to_str().context("utf-8 path")?]).await?;
        std::fs::remove_file(&path)?;
        assert!(!output.status.success(), "{name}: must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    Ok(())
}

/// Run `shoal serve ARGS` until it is ready, stop it with SIGTERM and return its log.
async fn serve_log(args: &[&str]) -> anyhow::Result<String> {
    let (mut child, _) = start_serve(args, Stdio::piped()).await?;
    let mut stderr = child.stderr.take().context("stderr")?;
    assert!(terminate(&mut child).await?.success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).await?;
    Ok(log)
}

#[tokio::test]
async fn serve_logs_how_each_plugin_was_loaded_and_reuses_the_cache() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("shoal-cli-cache-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_text = dir.to_str().context("utf-8 path")?;
    let chat = plugin_path("chat");
    let chat = chat.to_str().context("utf-8 path")?;

    let first = serve_log(&["--cache-dir", dir_text, chat]).await?;
    assert!(first.contains("compiled chat.wasm ("), "{first}");
    let second = serve_log(&["--cache-dir", dir_text, chat]).await?;
    assert!(second.contains("loaded chat.wasm ("), "{second}");
    assert!(second.contains(" from cache in "), "{second}");
    let entries = std::fs::read_dir(&dir)?.count();

    let uncached = serve_log(&["--no-cache", chat]).await?;
    assert!(uncached.contains("compiled chat.wasm ("), "{uncached}");
    let bundled = serve_log(&["--cache-dir", dir_text]).await?;
    assert!(bundled.contains("compiled echo (bundled) ("), "{bundled}");
    assert_eq!(std::fs::read_dir(&dir)?.count(), entries + 1);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn max_connections_past_the_pool_are_capped_with_a_warning() -> anyhow::Result<()> {
    let log = serve_log(&["--no-cache", "--max-connections", "20000"]).await?;
    let warning = "max_connections of `default` is 20000, but the instance pool holds 16384";
    assert_eq!(log.matches(warning).count(), 1, "said once: {log}");
    Ok(())
}

#[tokio::test]
async fn serve_config_names_the_listener_whose_address_is_taken() -> anyhow::Result<()> {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let taken = taken.local_addr()?;
    let echo = plugin_path("echo");
    let echo = echo.display();
    let path = config_file(
        "taken",
        &format!(
            "[[listener]]\nname = \"free\"\naddress = \"127.0.0.1:0\"\nplugin = \"{echo}\"\n\n\
             [[listener]]\nname = \"busy\"\naddress = \"{taken}\"\nplugin = \"{echo}\"\n"
        ),
    )?;
    let output = shoal(&["serve", "--config", path.to_str().context("utf-8 path")?]).await?;
    std::fs::remove_file(&path)?;
    assert!(!output.status.success(), "must fail: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("listener `busy`: cannot listen on {taken}")),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn serve_refuses_an_unbounded_pool_size_at_once() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let output = shoal(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pool-size",
        "99999999999",
    ])
    .await?;
    assert!(!output.status.success(), "must fail: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid `pool_size`: must be between 1 and 1024"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused before serving"
    );
    Ok(())
}

#[tokio::test]
async fn a_server_with_the_largest_acceptor_pool_stops_on_sigterm() -> anyhow::Result<()> {
    let (mut child, addr) = serve(&["--pool-size", "1024"]).await?;
    let mut client = TcpStream::connect(addr).await?;
    client.write_all(b"many acceptors\n").await?;
    let mut reply = [0u8; 15];
    client.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"many acceptors\n");
    let status = terminate(&mut child).await?;
    assert!(status.success(), "graceful exit: {status:?}");
    Ok(())
}

#[tokio::test]
async fn check_and_serve_refuse_a_fifo_and_a_huge_file_at_once() -> anyhow::Result<()> {
    let scratch = |name: &str| {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cli-{}-{name}", std::process::id()))
    };
    let fifo = scratch("fifo.wasm");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status().await?;
    anyhow::ensure!(made.success(), "mkfifo");
    // A component header, then a sparse gibibyte.
    let huge = scratch("huge.wasm");
    std::fs::write(&huge, b"\0asm\x0d\0\x01\0")?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)?
        .set_len(1 << 30)?;
    let cases = [
        (&fifo, "is not a regular file"),
        (&huge, "larger than the 64MiB a plugin may be"),
    ];
    let mut outputs = Vec::new();
    for (path, _) in &cases {
        let path = path.to_str().context("utf-8 path")?;
        // Opening a FIFO waits for a writer; reading a gibibyte takes a while: neither may
        // happen, so both commands answer well within the 60 s `shoal` allows.
        outputs.push(shoal(&["check", path]).await);
        outputs.push(shoal(&["serve", "--listen", "127.0.0.1:0", path]).await);
    }
    std::fs::remove_file(&fifo)?;
    std::fs::remove_file(&huge)?;
    for (index, output) in outputs.into_iter().enumerate() {
        let output = output?;
        let (path, expected) = &cases[index / 2];
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    }
    Ok(())
}

/// `--max-instances` and `--hibernate-after` on the one-listener form: three clients on one
/// instance, each greeted in turn as the one before falls asleep, each woken by its line and
/// at SIGTERM for its `close(shutdown)`; the startup line says both limits.
#[tokio::test]
async fn serve_hibernates_with_more_connections_than_instances() -> anyhow::Result<()> {
    let greeter = plugin_path("greeter");
    let args = [
        "--no-cache",
        "--max-instances",
        "1",
        "--hibernate-after",
        "50ms",
        greeter.to_str().context("utf-8 path")?,
    ];
    let (mut child, addr) = start_serve(&args, Stdio::piped()).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = BufReader::new(TcpStream::connect(addr).await?);
        let id = support::greeted_id(&read_line(&mut client).await?)?;
        clients.push((client, id));
    }
    for (client, id) in &mut clients {
        client.get_mut().write_all(b"awake?\n").await?;
        assert_eq!(read_line(client).await?, format!("moved {id}"));
        assert_eq!(read_line(client).await?, format!("{id}: awake?"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stderr = child.stderr.take().context("stderr")?;
    assert!(terminate(&mut child).await?.success());
    for (client, id) in &mut clients {
        assert_eq!(read_line(client).await?, format!("moved {id}"));
        assert_eq!(read_line(client).await?, "bye (shutdown)");
    }
    let mut log = String::new();
    stderr.read_to_string(&mut log).await?;
    assert!(log.contains("instances=1"), "{log}");
    assert!(log.contains("hibernate_after=Some(50ms)"), "{log}");
    Ok(())
}

#[tokio::test]
async fn hibernation_flags_do_not_mix_with_a_config_file() -> anyhow::Result<()> {
    let output = shoal(&["serve", "--config", "shoal.toml", "--hibernate-after", "1s"]).await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    Ok(())
}

/// Every line of `log` as a JSON object.
fn json_lines(log: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    log.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not a JSON line: {line:?}"))?;
            anyhow::ensure!(value.is_object(), "not an object: {line:?}");
            Ok(value)
        })
        .collect()
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line_with_the_connection_fields()
-> anyhow::Result<()> {
    let trap_on = plugin_path("trap-on");
    let trap_on = trap_on.to_str().context("path")?;
    let (mut child, addr) = start_serve(&["--log-format", "json", trap_on], Stdio::piped()).await?;
    let mut client = TcpStream::connect(addr).await?;
    client.write_all(b"trap\n").await?;
    // The trap ends the connection.
    tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut client)).await??;
    let mut stderr = child.stderr.take().context("stderr")?;
    assert!(terminate(&mut child).await?.success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).await?;
    let lines = json_lines(&log)?;
    assert!(
        lines.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening") || m.contains("serving"))),
        "{log}"
    );
    let trapped = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("`handle` failed"))
        })
        .with_context(|| format!("no line about the trap in {log}"))?;
    assert!(trapped["conn"].is_u64(), "{trapped}");
    assert_eq!(trapped["plugin"], "trap-on", "{trapped}");
    assert_eq!(trapped["listener"], "default", "{trapped}");
    assert!(
        trapped["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{trapped}"
    );
    assert!(trapped["level"].is_string() && trapped["timestamp"].is_string());
    Ok(())
}

#[tokio::test]
async fn a_config_file_can_ask_for_a_json_log() -> anyhow::Result<()> {
    let echo = plugin_path("echo");
    let config = format!(
        "log_format = \"json\"\n[[listener]]\nname = \"echo\"\naddress = \"127.0.0.1:0\"\nplugin = \"{}\"\n",
        echo.display()
    );
    let server = support::ShoalProcess::serve_config("json-log", &config, 1).await?;
    let log = server.terminate().await?;
    let lines = json_lines(&log)?;
    assert!(
        lines.iter().any(|line| line["listener"] == "echo"),
        "no line names the listener: {log}"
    );
    Ok(())
}
