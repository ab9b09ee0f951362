//! `loadgen swap`: echo load on many live connections while the plugin file is replaced by
//! a rename every so often (alternating two versions), as a deploy would; counts what the
//! load lost and times how long each swap took to reach a new connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_bench::{micros, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one run asks for.
pub struct SwapLoad {
    pub addr: SocketAddr,
    pub conns: usize,
    pub seconds: f64,
    /// The file the server serves (and watches).
    pub live: PathBuf,
    /// The two versions put in its place in turn; the second greets `v2` on connect.
    pub versions: [PathBuf; 2],
    /// Seconds between swaps; 0 for none (the same load, for comparison).
    pub every: f64,
}

pub async fn run(load: SwapLoad) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mismatches = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..load.conns {
        let mut stream = TcpStream::connect(load.addr).await?;
        stream.set_nodelay(true)?;
        let (stop, mismatches) = (Arc::clone(&stop), Arc::clone(&mismatches));
        workers.push(tokio::spawn(async move {
            let message: Vec<u8> = (0..512).map(|j| (i + j) as u8).collect();
            let mut reply = vec![0u8; 512];
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                stream.write_all(&message).await?;
                stream.read_exact(&mut reply).await?;
                latencies.push(sent.elapsed());
                if reply != message {
                    mismatches.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(load.seconds);
    let mut to_new_version = Vec::new();
    let mut next = 1;
    while Instant::now() < deadline {
        if load.every <= 0.0 {
            tokio::time::sleep_until(deadline.into()).await;
            break;
        }
        tokio::time::sleep(Duration::from_secs_f64(load.every)).await;
        let started = Instant::now();
        replace(&load.live, &load.versions[next])?;
        // The version a new connection gets: v2 greets at once, v1 only echoes.
        let want_v2 = next == 1;
        loop {
            if serves_v2(load.addr).await? == want_v2 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "no swap in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_new_version.push(started.elapsed());
        next = 1 - next;
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failed = 0u64;
    for worker in workers {
        match worker.await {
            Ok(Ok(samples)) => latencies.extend(samples),
            _ => failed += 1,
        }
    }
    latencies.sort();
    let p99 = percentile(&latencies, 0.99).context("no round trips")?;
    let first = to_new_version.first().copied().unwrap_or_default();
    let mut rest: Vec<Duration> = to_new_version.iter().skip(1).copied().collect();
    rest.sort();
    let rest_median = percentile(&rest, 0.5).unwrap_or_default();
    println!(
        "round_trips_per_sec={:.0} p99_us={:.1} failed_conns={failed} mismatches={} swaps={} \
         first_swap_ms={:.1} swap_ms={:.1}",
        latencies.len() as f64 / load.seconds,
        micros(p99),
        mismatches.load(Ordering::Relaxed),
        to_new_version.len(),
        first.as_secs_f64() * 1e3,
        rest_median.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Put `version` in place of `live` as a deploy tool does: a copy beside it, then a rename.
pub fn replace(live: &Path, version: &Path) -> anyhow::Result<()> {
    let temporary = live.with_extension("wasm.new");
    std::fs::copy(version, &temporary)?;
    std::fs::rename(&temporary, live)?;
    Ok(())
}

/// Whether a new connection is served by the version that greets `v2`.
async fn serves_v2(addr: SocketAddr) -> anyhow::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"?").await?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await?;
    Ok(&first == b"v")
}
