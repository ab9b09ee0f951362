//! The load generator: a separate process that drives an echo server over loopback and prints
//! one line of `key=value` results. `shoal-bench` runs it; it can also be run by hand.
//!
//! ```text
//! loadgen rate --addr A [--seconds S] [--concurrency C]      connect, 64 B echo, close
//! loadgen echo --addr A [--conns N] [--size B] [--seconds S] round trips and latency
//! loadgen paced --addr A --rate R [--conns N] [--size B] [--connect] [--server-pid P]
//!                                                            a fixed offered load: CPU per op
//! loadgen idle --addr A [--conns N]                          hold N connections until stdin closes
//! loadgen broadcast --addr A [--conns N] [--seconds S]       chat lines delivered per second
//! loadgen spin --addr A [--conns N] [--seconds S]            keep N guests looping (spin plugin)
//! loadgen swap --addr A --live F --v1 F --v2 F [--every S]    echo load through hot swaps
//! loadgen handoff --addr A --live F --next F --next-name N    chat members moved by a swap
//! loadgen hibernate --addr A [--conns N] [--samples K] [--lines L] [--settle S]
//!                                                            an idle chat room: wake-ups, broadcast
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand};
use shoal_bench::{micros, percentile};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod handoff;
mod hibernate;
mod paced;
mod swap;
mod tls;

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
        /// The server process: how busy it and this process were is reported.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Connect over TLS, trusting this CA certificate (PEM): each connection is a full
        /// handshake.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
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
        /// The server process: how busy it and this process were is reported.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Connect over TLS, trusting this CA certificate (PEM).
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
    },
    /// A fixed offered load — `rate` round trips per second over `conns` connections, or
    /// with `connect` `rate` new connections per second — and what each operation cost the
    /// server (`server_pid`) and this process in CPU time.
    Paced {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 512)]
        size: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// New connections (connect, 64-byte echo, close) instead of round trips.
        #[arg(long)]
        connect: bool,
        /// The server process, whose CPU time per operation is reported.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Echo load (512 B round trips on `conns` connections) while the served plugin file is
    /// replaced by a rename every `every` seconds (0: never), alternating `v1` and `v2` (which
    /// greets `v2`): failed connections, mismatched echoes, p99, and the time from each
    /// rename to the first new connection on the new version.
    Swap {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long)]
        live: std::path::PathBuf,
        #[arg(long)]
        v1: std::path::PathBuf,
        #[arg(long)]
        v2: std::path::PathBuf,
        #[arg(long, default_value_t = 1.0)]
        every: f64,
    },
    /// `conns` chat members with names; the served chat file replaced by `next` (whose
    /// `/version` says `next_name`) with a rename; each member asks `/version` until the new
    /// build answers: when they moved, and the moves' cost per connection.
    Handoff {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        #[arg(long)]
        live: std::path::PathBuf,
        #[arg(long)]
        next: std::path::PathBuf,
        #[arg(long)]
        next_name: String,
    },
    /// Messages delivered per second through the `chat` plugin's broadcast: `conns` clients
    /// join, the first sends numbered lines as fast as the room keeps up (at most `window`
    /// lines ahead of the slowest receiver, so no mailbox overflows), every other client
    /// reads them; counted over `seconds` after a one-second warm-up.
    Broadcast {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Lines the sender may be ahead of the slowest receiver; 0 floods (never waits).
        #[arg(long, default_value_t = 256)]
        window: u64,
    },
    /// The noisy neighbour: `conns` loops, each connecting to a `spin` plugin and sending
    /// `spin`, so that a guest loops until the host stops it at its CPU budget, then again.
    Spin {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// An idle chat room (served with `announce = "off"`): `conns` members join and stay
    /// quiet for `settle` seconds; `ready` is printed and a line awaited on stdin; then
    /// `samples` members ask `/version` one at a time, and the first sends `lines` lines to
    /// all: wake-up latency and messages delivered per second.
    Hibernate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 20)]
        samples: usize,
        #[arg(long, default_value_t = 10)]
        lines: usize,
        #[arg(long, default_value_t = 1.5)]
        settle: f64,
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
                server_pid,
                tls_ca,
            } => {
                let tls = tls_ca.as_deref().map(tls::connector).transpose()?;
                rate(
                    addr,
                    Duration::from_secs_f64(seconds),
                    concurrency,
                    server_pid,
                    tls,
                )
                .await
            }
            Scenario::Echo {
                addr,
                conns,
                size,
                seconds,
                server_pid,
                tls_ca,
            } => {
                let tls = tls_ca.as_deref().map(tls::connector).transpose()?;
                echo(
                    addr,
                    conns,
                    size,
                    Duration::from_secs_f64(seconds),
                    server_pid,
                    tls,
                )
                .await
            }
            Scenario::Idle { addr, conns } => idle(addr, conns).await,
            Scenario::Paced {
                addr,
                rate,
                conns,
                size,
                seconds,
                connect,
                server_pid,
            } => {
                let load = paced::PacedLoad {
                    addr,
                    conns,
                    size,
                    rate,
                    seconds,
                    connect,
                    server_pid,
                };
                paced::run(load).await
            }
            Scenario::Hibernate {
                addr,
                conns,
                samples,
                lines,
                settle,
            } => {
                let load = hibernate::HibernateLoad {
                    addr,
                    conns,
                    samples,
                    lines,
                    settle: Duration::from_secs_f64(settle),
                };
                hibernate::run(load).await
            }
            Scenario::Spin {
                addr,
                conns,
                seconds,
            } => spin(addr, conns, Duration::from_secs_f64(seconds)).await,
            Scenario::Broadcast {
                addr,
                conns,
                seconds,
                window,
            } => broadcast(addr, conns, Duration::from_secs_f64(seconds), window).await,
            Scenario::Swap {
                addr,
                conns,
                seconds,
                live,
                v1,
                v2,
                every,
            } => {
                let load = swap::SwapLoad {
                    addr,
                    conns,
                    seconds,
                    live,
                    versions: [v1, v2],
                    every,
                };
                swap::run(load).await
            }
            Scenario::Handoff {
                addr,
                conns,
                live,
                next,
                next_name,
            } => {
                let load = handoff::HandoffLoad {
                    addr,
                    conns,
                    live,
                    next,
                    next_name,
                };
                handoff::run(load).await
            }
        }
    })
}

async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
    reply: &mut [u8],
) -> anyhow::Result<()> {
    stream.write_all(message).await?;
    stream.read_exact(reply).await?;
    ensure!(reply == message, "the echo differs from the message");
    Ok(())
}

async fn rate(
    addr: SocketAddr,
    duration: Duration,
    concurrency: usize,
    server_pid: Option<u32>,
    tls: Option<tokio_rustls::TlsConnector>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + duration;
    let busy = tokio::spawn(busy(start, deadline, server_pid));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let tls = tls.clone();
        workers.push(tokio::spawn(async move {
            let message = [7u8; 64];
            let mut reply = [0u8; 64];
            let mut done = 0u64;
            while Instant::now() < deadline {
                match &tls {
                    None => {
                        let mut stream = TcpStream::connect(addr).await?;
                        stream.set_nodelay(true)?;
                        round_trip(&mut stream, &message, &mut reply).await?;
                    }
                    Some(tls) => {
                        let mut stream = tls::connect(tls, addr).await?;
                        round_trip(&mut stream, &message, &mut reply).await?;
                    }
                }
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    println!(
        "conns_per_sec={:.0}{}",
        total as f64 / duration.as_secs_f64(),
        busy.await??
    );
    Ok(())
}

async fn echo(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    duration: Duration,
    server_pid: Option<u32>,
    tls: Option<tokio_rustls::TlsConnector>,
) -> anyhow::Result<()> {
    let start = Instant::now() + Duration::from_secs(1);
    let deadline = start + duration;
    let busy = tokio::spawn(busy(start, deadline, server_pid));
    let mut workers = Vec::new();
    for i in 0..conns {
        let message: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
        match &tls {
            None => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                workers.push(tokio::spawn(echo_loop(stream, message, start, deadline)));
            }
            Some(tls) => {
                let stream = tls::connect(tls, addr).await?;
                workers.push(tokio::spawn(echo_loop(stream, message, start, deadline)));
            }
        }
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.5).context("no round trips")?;
    let p99 = percentile(&latencies, 0.99).context("no round trips")?;
    println!(
        "round_trips_per_sec={:.0} p50_us={:.1} p99_us={:.1}{}",
        latencies.len() as f64 / duration.as_secs_f64(),
        micros(p50),
        micros(p99),
        busy.await??
    );
    Ok(())
}

/// One connection's round trips of `message` until `deadline`: the latencies of those sent
/// from `start` on.
async fn echo_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    message: Vec<u8>,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut reply = vec![0u8; message.len()];
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
    Ok(latencies)
}

/// ` client_busy=… server_busy=…`: the share of one core this process and the server (when
/// given) used from `start` to `end` — which side a closed loop saturated.
async fn busy(start: Instant, end: Instant, server_pid: Option<u32>) -> anyhow::Result<String> {
    let window = paced::Window {
        start: tokio::time::Instant::from_std(start),
        end: tokio::time::Instant::from_std(end),
    };
    let (server, client) = paced::sample_cpu(window, server_pid).await?;
    let seconds = (end - start).as_secs_f64();
    let mut out = format!(" client_busy={:.3}", client.as_secs_f64() / seconds);
    if let Some(server) = server {
        out.push_str(&format!(
            " server_busy={:.3}",
            server.as_secs_f64() / seconds
        ));
    }
    Ok(out)
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

/// Join the chat and read its welcome line.
async fn join_chat(addr: SocketAddr) -> anyhow::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut welcome = String::new();
    reader.read_line(&mut welcome).await?;
    ensure!(
        welcome.starts_with("* welcome"),
        "not the chat plugin: {welcome:?}"
    );
    Ok(reader)
}

async fn broadcast(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    window: u64,
) -> anyhow::Result<()> {
    ensure!(conns >= 2, "a broadcast needs a sender and a receiver");
    let mut sender = join_chat(addr).await?;
    let mut receivers = Vec::new();
    for _ in 1..conns {
        receivers.push(join_chat(addr).await?);
    }
    // Each receiver's count of lines, in order; the sender waits for the slowest.
    let received: Arc<Vec<AtomicU64>> = Arc::new((1..conns).map(|_| AtomicU64::new(0)).collect());
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::new();
    for (index, mut reader) in receivers.into_iter().enumerate() {
        let received = Arc::clone(&received);
        let progress = Arc::clone(&progress);
        readers.push(tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).await? == 0 {
                    return anyhow::Ok(());
                }
                if line.starts_with("* ") {
                    continue; // join notices
                }
                let number: u64 = line
                    .trim_end()
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("a numbered line: {line:?}"))?;
                let expected = received[index].load(Ordering::Relaxed) + 1;
                ensure!(
                    number == expected,
                    "line {number} arrived, expected {expected}"
                );
                received[index].store(number, Ordering::Relaxed);
                progress.notify_one();
            }
        }));
    }
    let total = |received: &[AtomicU64]| -> u64 {
        received.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    };
    let slowest = |received: &[AtomicU64]| -> u64 {
        received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    let start = Instant::now() + Duration::from_secs(1);
    let deadline = start + duration;
    let mut at_start = None;
    let mut sent = 0u64;
    let mut sender_dropped = 0;
    while Instant::now() < deadline {
        if at_start.is_none() && Instant::now() >= start {
            at_start = Some(total(&received));
        }
        if window > 0 && sent - slowest(&received) >= window {
            progress.notified().await;
            continue;
        }
        sent += 1;
        let line = format!("line {sent}\n");
        // A flood fills the socket until the server reads again: wait no later than the end.
        let write = sender.get_mut().write_all(line.as_bytes());
        match tokio::time::timeout_at(deadline.into(), write).await {
            Ok(Ok(())) => {}
            // The server closed the sender (a limit it reached): reported, not fatal.
            Ok(Err(_)) => {
                sender_dropped = 1;
                break;
            }
            Err(_) => break,
        }
        if window == 0 {
            // One task thread: a flood that never blocks would starve the receivers.
            tokio::task::yield_now().await;
        }
    }
    let delivered = total(&received) - at_start.unwrap_or(0);
    // A receiver whose stream ended was dropped by the server; one that saw a gap or a
    // line out of order failed its check.
    let (mut dropped, mut gaps) = (0, 0);
    for reader in readers {
        if reader.is_finished() {
            match reader.await {
                Ok(Ok(())) => dropped += 1,
                _ => gaps += 1,
            }
        } else {
            reader.abort();
        }
    }
    println!(
        "messages_per_sec={:.0} sent={sent} receivers={} dropped={dropped} gaps={gaps} \
         sender_dropped={sender_dropped}",
        delivered as f64 / duration.as_secs_f64(),
        conns - 1
    );
    drop(sender);
    Ok(())
}

async fn spin(addr: SocketAddr, conns: usize, duration: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + duration;
    let mut loops = Vec::new();
    for _ in 0..conns {
        loops.push(tokio::spawn(async move {
            let mut stopped = 0u64;
            while Instant::now() < deadline {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(b"spin\n").await?;
                // The host stops the guest at its CPU budget and closes the connection.
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout_at(deadline.into(), stream.read_to_end(&mut sink)).await;
                stopped += 1;
            }
            anyhow::Ok(stopped)
        }));
    }
    let mut stopped = 0;
    for spinner in loops {
        stopped += spinner.await??;
    }
    println!("guests_stopped={stopped}");
    Ok(())
}
