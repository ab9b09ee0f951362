//! The load generator: a separate process that drives an echo server over loopback and prints
//! one line of `key=value` results. `shoal-bench` runs it; it can also be run by hand.
//!
//! ```text
//! loadgen rate --addr A [--seconds S] [--concurrency C]      connect, 64 B echo, close
//! loadgen echo --addr A [--conns N] [--size B] [--seconds S] round trips and latency
//! loadgen idle --addr A [--conns N]                          hold N connections until stdin closes
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand};
use shoal_bench::{micros, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Connections per second: connect, one 64-byte echo, close, from `concurrency` loops.
    Rate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Round trips per second and latency: `conns` connections, each sending `size`-byte
    /// messages and waiting for the echo, after a one-second warm-up.
    Echo {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 512)]
        size: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Open `conns` connections, echo one byte on each, print `ready`, hold them until stdin
    /// closes.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match Cli::parse().scenario {
            Scenario::Rate {
                addr,
                seconds,
                concurrency,
            } => rate(addr, Duration::from_secs_f64(seconds), concurrency).await,
            Scenario::Echo {
                addr,
                conns,
                size,
                seconds,
            } => echo(addr, conns, size, Duration::from_secs_f64(seconds)).await,
            Scenario::Idle { addr, conns } => idle(addr, conns).await,
        }
    })
}

async fn round_trip(
    stream: &mut TcpStream,
    message: &[u8],
    reply: &mut [u8],
) -> anyhow::Result<()> {
    stream.write_all(message).await?;
    stream.read_exact(reply).await?;
    ensure!(reply == message, "the echo differs from the message");
    Ok(())
}

async fn rate(addr: SocketAddr, duration: Duration, concurrency: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        workers.push(tokio::spawn(async move {
            let message = [7u8; 64];
            let mut reply = [0u8; 64];
            let mut done = 0u64;
            while Instant::now() < deadline {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                round_trip(&mut stream, &message, &mut reply).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    println!("conns_per_sec={:.0}", total as f64 / duration.as_secs_f64());
    Ok(())
}

async fn echo(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now() + Duration::from_secs(1);
    let deadline = start + duration;
    let mut workers = Vec::new();
    for i in 0..conns {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        workers.push(tokio::spawn(async move {
            let message: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
            let mut reply = vec![0u8; size];
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                round_trip(&mut stream, &message, &mut reply).await?;
                if sent >= start {
                    latencies.push(sent.elapsed());
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.5).context("no round trips")?;
    let p99 = percentile(&latencies, 0.99).context("no round trips")?;
    println!(
        "round_trips_per_sec={:.0} p50_us={:.1} p99_us={:.1}",
        latencies.len() as f64 / duration.as_secs_f64(),
        micros(p50),
        micros(p99)
    );
    Ok(())
}

async fn idle(addr: SocketAddr, conns: usize) -> anyhow::Result<()> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut stream = TcpStream::connect(addr).await?;
        round_trip(&mut stream, b"x", &mut [0u8; 1]).await?;
        streams.push(stream);
    }
    println!("ready conns={}", streams.len());
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await? > 0 {}
    Ok(())
}
