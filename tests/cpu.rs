//! CPU between tenants: a budget counts the CPU a guest used, not time the process or its
//! thread was not running; a looping tenant does not take the cores from the others; the
//! cores are shared between listeners that all want them by their `cpu_share`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use shoal_host::{Plugin, Runtime, RuntimeConfig, ServerConfig, Stats};
use support::{ShoalProcess, TestServer, plugin_path, random_bytes, read_to_end};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests of this file measure the CPU, or freeze a server that does: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_charges_no_guest_for_the_freeze() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let spin = plugin_path("spin");
    let config = format!(
        "[[listener]]\nname = \"burn\"\naddress = \"127.0.0.1:0\"\nplugin = \"{}\"\n\
         cpu_budget_per_call = \"100ms\"\n",
        spin.display()
    );
    let server = ShoalProcess::serve_config("frozen", &config, 1).await?;
    let addr = server.addrs["burn"];
    // One client keeps a guest busy: each `burn` is a call of ~5 ms of CPU, one after another,
    // so a freeze almost always falls inside a call.
    let stop = Arc::new(AtomicBool::new(false));
    let burning = Arc::clone(&stop);
    let burner = tokio::spawn(async move {
        let mut client = TcpStream::connect(addr).await?;
        let mut replies = 0u32;
        let mut reply = [0u8; 4];
        while !burning.load(Ordering::Relaxed) {
            client.write_all(b"burn").await?;
            client.read_exact(&mut reply).await?;
            ensure!(&reply == b"burn", "burn answered {reply:?}");
            replies += 1;
        }
        client.write_all(b"still here").await?;
        let mut still = [0u8; 10];
        client.read_exact(&mut still).await?;
        ensure!(&still == b"still here");
        anyhow::Ok(replies)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        server.signal("STOP").await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.signal("CONT").await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let replies = tokio::time::timeout(Duration::from_secs(20), burner).await???;
    ensure!(replies >= 10, "only {replies} burns came back");
    // A guest that really loops is still stopped at its budget.
    let mut spinner = TcpStream::connect(addr).await?;
    spinner.write_all(b"spin").await?;
    assert!(
        read_to_end(&mut spinner).await?.is_empty(),
        "closed without output"
    );
    let log = server.terminate().await?;
    let faults = log.matches("ran past its CPU budget").count();
    assert_eq!(faults, 1, "only the looping guest was stopped:\n{log}");
    // The connection's CPU total is in its ending's line: the budget and one tick past it.
    let fault = log
        .lines()
        .find(|line| line.contains("ran past its CPU budget"))
        .context("the fault's line")?;
    let cpu_ms: u64 = fault
        .split("cpu_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("cpu_ms in the line")?
        .parse()?;
    assert!((100..=110).contains(&cpu_ms), "{fault}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_waits_is_charged_nothing_for_the_wait() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let runtime = runtime()?;
    let spin = Plugin::from_file(&runtime, plugin_path("spin"))?;
    // A budget of 50 ms of CPU; each `nap` waits 200 ms (a WASI sleep) and computes nothing.
    let config = ServerConfig::builder()
        .name("nap")
        .cpu_budget_per_call(Duration::from_millis(50))
        .build()?;
    let server = TestServer::start_with(spin, config).await?;
    let mut client = TcpStream::connect(server.addr).await?;
    let mut reply = [0u8; 3];
    for _ in 0..3 {
        client.write_all(b"nap").await?;
        client.read_exact(&mut reply).await?;
        ensure!(&reply == b"nap", "nap answered {reply:?}");
    }
    assert_eq!(server.stats.faults(), 0, "waiting is not running");
    assert!(
        server.stats.guest_cpu() < Duration::from_millis(20),
        "charged {:?} for 600 ms of sleep",
        server.stats.guest_cpu()
    );
    drop(client);
    server.shutdown().await
}

/// A runtime of its own for a test that measures the CPU: its core slots match the test's
/// two worker threads.
fn runtime() -> anyhow::Result<Runtime> {
    let config = RuntimeConfig::builder()
        .max_instances(64)
        .cpu_slots(2)
        .build()?;
    Ok(Runtime::new(config)?)
}

/// A listener whose guests loop for as long as the test needs.
fn spin_config(name: &str, share: u32) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig::builder()
        .name(name)
        .cpu_share(share)
        .cpu_budget_per_call(Duration::from_secs(60))
        .call_timeout(Duration::from_secs(120))
        .shutdown_timeout(Duration::from_millis(300))
        .build()?)
}

/// Start `count` connections to `addr` whose guests loop.
async fn start_spinning(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut spinners = Vec::new();
    for _ in 0..count {
        let mut client = TcpStream::connect(addr).await?;
        client.write_all(b"spin").await?;
        spinners.push(client);
    }
    Ok(spinners)
}

/// The median of `count` 64-byte echo round trips on one connection, every byte checked.
async fn median_round_trip(addr: SocketAddr, count: usize) -> anyhow::Result<Duration> {
    let mut client = TcpStream::connect(addr).await?;
    let mut times = Vec::with_capacity(count);
    let mut reply = [0u8; 64];
    for round in 0..count {
        let message = random_bytes(64, round as u64 + 1);
        let started = Instant::now();
        client.write_all(&message).await?;
        client.read_exact(&mut reply).await?;
        times.push(started.elapsed());
        ensure!(reply[..] == message[..], "round {round}: wrong bytes");
    }
    times.sort();
    Ok(times[count / 2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_tenant_leaves_the_echo_tenant_its_latency() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let runtime = runtime()?;
    let echo = Plugin::from_file(&runtime, plugin_path("echo"))?;
    let spin = Plugin::from_file(&runtime, plugin_path("spin"))?;
    for spinners in [1, 4, 16] {
        let echo_config = ServerConfig::builder().name("echo").build()?;
        let echo_server = TestServer::start_with(echo.clone(), echo_config).await?;
        let spin_server = TestServer::start_with(spin.clone(), spin_config("spin", 1)?).await?;
        let quiet = median_round_trip(echo_server.addr, 300).await?;
        let _spinning = start_spinning(spin_server.addr, spinners).await?;
        support::wait_for("the spinners to run", || {
            spin_server.stats.guest_cpu() > Duration::from_millis(20)
        })
        .await?;
        let busy = median_round_trip(echo_server.addr, 300).await?;
        eprintln!("{spinners} spinning: echo median {quiet:?} quiet, {busy:?} beside them");
        // The bound: a looping tenant holds at most its share of the cores (one of two) while
        // echo is active, so echo keeps a core and its median stays near the quiet one. Quiet
        // medians here have two modes, ~18 µs and ~95 µs (waking a parked worker costs ~75 µs
        // on this VM), so: at most twice the quiet median, plus 200 µs. Without shares the
        // median was 3.3 ms with 4 spinners here, 8.6 ms with 16 in issue 11: every echo
        // waited for the spinners' 1 ms turns.
        let bound = quiet * 2 + Duration::from_micros(200);
        assert!(
            busy <= bound,
            "{spinners} spinning: echo median {busy:?} > {bound:?} (quiet {quiet:?})"
        );
        echo_server.shutdown().await?;
        spin_server.shutdown().await?;
    }
    Ok(())
}

/// Guest CPU of `stats` over `period`.
async fn cpu_over(stats: &[&Arc<Stats>; 2], period: Duration) -> [Duration; 2] {
    let before = [stats[0].guest_cpu(), stats[1].guest_cpu()];
    tokio::time::sleep(period).await;
    [
        stats[0].guest_cpu() - before[0],
        stats[1].guest_cpu() - before[1],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_that_all_want_the_cores_share_them_by_weight() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let runtime = runtime()?;
    let spin = Plugin::from_file(&runtime, plugin_path("spin"))?;
    let heavy = TestServer::start_with(spin.clone(), spin_config("heavy", 3)?).await?;
    let light = TestServer::start_with(spin.clone(), spin_config("light", 1)?).await?;
    let _heavy_spinning = start_spinning(heavy.addr, 4).await?;
    let _light_spinning = start_spinning(light.addr, 4).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let period = Duration::from_secs(2);
    let [heavy_cpu, light_cpu] = cpu_over(&[&heavy.stats, &light.stats], period).await;
    // Each spinning connection's own CPU, in the listener's stats.
    let per_connection = light.stats.connections_cpu();
    assert_eq!(per_connection.len(), 4, "{per_connection:?}");
    assert!(per_connection.iter().all(|(_, cpu)| !cpu.is_zero()));
    let summed: Duration = per_connection.iter().map(|(_, cpu)| *cpu).sum();
    assert!(summed <= light.stats.guest_cpu());
    let total = heavy_cpu + light_cpu;
    let light_share = light_cpu.as_secs_f64() / total.as_secs_f64();
    eprintln!("heavy {heavy_cpu:?}, light {light_cpu:?}: light's share {light_share:.3}");
    assert!(
        (0.18..=0.32).contains(&light_share),
        "weights 3:1, light's share {light_share:.3} (heavy {heavy_cpu:?}, light {light_cpu:?})"
    );
    // Work-conserving: between them they keep both cores busy (more than one core's worth;
    // ~1.75 here on a quiet machine, less when something else runs beside the test).
    assert!(
        total >= period.mul_f64(1.25),
        "only {total:?} of CPU in {period:?} on two cores"
    );
    // Alone, a listener has every core.
    let light_stats = Arc::clone(&light.stats);
    light.shutdown().await?;
    assert!(
        light_stats.connections_cpu().is_empty(),
        "ended connections leave the list"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let [alone, _] = cpu_over(&[&heavy.stats, &heavy.stats], period).await;
    assert!(
        alone >= period.mul_f64(1.25),
        "alone, heavy used only {alone:?} in {period:?}"
    );
    heavy.shutdown().await?;
    Ok(())
}
