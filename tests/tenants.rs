//! Several listeners in one server, each with its own plugin, limits and capabilities: the
//! misbehaving plugins (an endless loop, endless allocation, endless output, a trap in
//! `init`, a silent client) each end only their own connections, for the right reason, while
//! an echo listener in the same process keeps answering; and the capability probe is denied
//! everything by default and allowed exactly what it is granted.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use shoal_host::{Capabilities, Limit, ServerConfig, Stats};
use support::{TestServer, plugin, random_bytes, read_line, read_to_end, rss_kib, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn listener(name: &str) -> shoal_host::ServerConfigBuilder {
    ServerConfig::builder()
        .name(name)
        .pool_size(2)
        .shutdown_timeout(Duration::from_secs(5))
}

/// `count` 64-byte round trips on one connection; every byte must come back. Returns the
/// median round trip.
async fn echo_round_trips(
    client: &mut TcpStream,
    count: usize,
    seed: u64,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(count);
    let mut reply = [0u8; 64];
    for n in 0..count {
        let message = random_bytes(64, seed + n as u64);
        let start = Instant::now();
        client.write_all(&message).await?;
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut reply))
            .await
            .context("echo timed out")??;
        times.push(start.elapsed());
        ensure!(reply[..] == message[..], "echo returned other bytes");
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Wait until `stats` counted `limit` at least once.
async fn limit_hit(stats: &Arc<Stats>, limit: Limit) -> anyhow::Result<()> {
    let stats = Arc::clone(stats);
    wait_for(&format!("{limit:?} to be counted"), move || {
        stats.limit_hits(limit) > 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_tenants_end_only_their_own_connections() -> anyhow::Result<()> {
    let echo = TestServer::start_with(plugin("echo"), listener("echo").build()?).await?;
    let spin = TestServer::start_with(
        plugin("spin"),
        listener("spin")
            .cpu_budget_per_call(Duration::from_millis(50))
            .build()?,
    )
    .await?;
    let hog = TestServer::start_with(
        plugin("hog"),
        // A CPU budget that cannot run out first, even on a loaded machine: the hog must
        // meet its memory limit.
        listener("hog")
            .memory_limit(8 << 20)
            .cpu_budget_per_call(Duration::from_secs(3))
            .build()?,
    )
    .await?;
    let flood = TestServer::start_with(
        plugin("flood"),
        listener("flood")
            .output_buffer_limit(256 << 10)
            .write_timeout(Duration::from_millis(500))
            .build()?,
    )
    .await?;
    let trap_init =
        TestServer::start_with(plugin("trap-init"), listener("trap-init").build()?).await?;
    let idle = TestServer::start_with(
        plugin("echo"),
        listener("slowloris")
            .idle_timeout(Duration::from_millis(300))
            .build()?,
    )
    .await?;

    let mut client = echo.connect().await?;
    client.set_nodelay(true)?;
    let quiet = echo_round_trips(&mut client, 300, 0).await?;
    let rss_before = rss_kib()?;

    // The attack: four connections to each misbehaving listener at once, twice over.
    let mut attackers = Vec::new();
    for _wave in 0..2 {
        for _ in 0..4 {
            let (spin, hog, flood, trap_init, idle) =
                (spin.addr, hog.addr, flood.addr, trap_init.addr, idle.addr);
            attackers.push(tokio::spawn(async move {
                let mut looping = TcpStream::connect(spin).await?;
                looping.write_all(b"spin\n").await?;
                let mut hungry = TcpStream::connect(hog).await?;
                hungry.write_all(b"feed me\n").await?;
                // Keeps the flood guest sending (each line is another event) and never reads.
                let mut flooding = TcpStream::connect(flood).await?;
                let keep_sending = tokio::spawn(async move {
                    for _ in 0..300 {
                        if flooding.write_all(b"go\n").await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                let mut trapping = TcpStream::connect(trap_init).await?;
                let mut silent = TcpStream::connect(idle).await?;
                // Each ends, from the server's side, with a clean end of stream.
                for ended in [&mut looping, &mut hungry, &mut trapping, &mut silent] {
                    ensure!(read_to_end(ended).await?.is_empty(), "no output expected");
                }
                keep_sending.await?;
                anyhow::Ok(())
            }));
        }
    }
    let attacked = echo_round_trips(&mut client, 300, 1_000).await?;
    for attacker in attackers {
        attacker.await??;
    }
    let rss_after = rss_kib()?;
    eprintln!(
        "echo median round trip: {quiet:?} quiet, {attacked:?} under attack; RSS {rss_before} → {rss_after} KiB"
    );

    // Each attack ended for its own reason, counted by its own listener.
    limit_hit(&spin.stats, Limit::CpuBudget).await?;
    limit_hit(&hog.stats, Limit::Memory).await?;
    limit_hit(&flood.stats, Limit::Write).await?;
    limit_hit(&idle.stats, Limit::Idle).await?;
    let trapped = Arc::clone(&trap_init.stats);
    wait_for("trap-init's traps", move || trapped.faults() >= 8).await?;
    assert_eq!(spin.stats.limit_hits(Limit::CpuBudget), 8);
    assert_eq!(hog.stats.limit_hits(Limit::Memory), 8);
    assert_eq!(idle.stats.limit_hits(Limit::Idle), 8);
    for server in [&spin, &hog, &flood, &trap_init, &idle] {
        server.wait_idle().await?;
    }
    // The echo tenant saw none of it: no fault, every byte back, and a latency within a
    // generous bound of its quiet latency (the real figures are in BENCHMARKS.md).
    assert_eq!(echo.stats.faults(), 0);
    assert!(
        attacked <= quiet * 20 + Duration::from_millis(20),
        "echo slowed from {quiet:?} to {attacked:?}"
    );
    assert!(
        rss_after < rss_before + 256 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
    drop(client);
    for server in [echo, spin, hog, flood, trap_init, idle] {
        server.shutdown().await?;
    }
    Ok(())
}

/// Send one probe command and read its answer.
async fn probe(client: &mut BufReader<TcpStream>, command: &str) -> anyhow::Result<String> {
    client
        .get_mut()
        .write_all(format!("{command}\n").as_bytes())
        .await?;
    read_line(client).await
}

#[tokio::test]
async fn capabilities_are_denied_by_default_and_given_exactly_as_granted() -> anyhow::Result<()> {
    // Something the probe could connect to, if sockets were granted (they never are).
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let connect = format!("connect {}", target.local_addr()?);
    let public = std::env::temp_dir().join(format!("shoal-public-{}", std::process::id()));
    std::fs::create_dir_all(&public)?;
    std::fs::write(public.join("hello.txt"), "hello")?;
    // The host's own environment (HOME, PATH, …) must stay invisible to every guest.
    let bare = TestServer::start_with(plugin("probe"), listener("bare").build()?).await?;
    let granted = TestServer::start_with(
        plugin("probe"),
        listener("granted")
            .capabilities(
                Capabilities::default()
                    .env("GREETING", "hello")
                    .config("motd", "be nice")
                    .read_only_dir(&public, "/public"),
            )
            .build()?,
    )
    .await?;

    let mut nothing = BufReader::new(bare.connect().await?);
    for command in [
        "read /etc/passwd",
        "list /",
        "read /public/hello.txt",
        connect.as_str(),
        "env HOME",
        "env GREETING",
        "config motd",
    ] {
        let answer = probe(&mut nothing, command).await?;
        assert!(answer.starts_with("denied"), "{command}: {answer}");
    }
    assert_eq!(probe(&mut nothing, "env-count").await?, "ok 0");

    let mut some = BufReader::new(granted.connect().await?);
    assert_eq!(probe(&mut some, "env GREETING").await?, "ok GREETING=hello");
    assert_eq!(probe(&mut some, "env-count").await?, "ok 1");
    assert_eq!(probe(&mut some, "config motd").await?, "ok motd=be nice");
    assert_eq!(
        probe(&mut some, "read /public/hello.txt").await?,
        "ok 5 bytes: hello"
    );
    assert_eq!(probe(&mut some, "list /public").await?, "ok 1 entries");
    for command in [
        "write /public/hello.txt",
        "write /public/new.txt",
        "read /etc/passwd",
        "read /public/../../../../etc/passwd",
        connect.as_str(),
        "env HOME",
        "config other",
    ] {
        let answer = probe(&mut some, command).await?;
        assert!(answer.starts_with("denied"), "{command}: {answer}");
    }
    assert_eq!(std::fs::read_to_string(public.join("hello.txt"))?, "hello");
    assert!(!public.join("new.txt").exists());
    std::fs::remove_dir_all(&public)?;
    bare.shutdown().await?;
    granted.shutdown().await
}
