//! `loadgen paced`: the same offered load for every server, so that what each one spends per
//! operation can be compared (a closed loop measures whichever side saturates first).
//!
//! * round trips: `conns` connections, each sending a `size`-byte message on a schedule —
//!   its share of `rate` per second, evenly spaced, whether or not the server keeps up —
//!   and reading the echo;
//! * connections (`--connect`): `rate` new connections per second, each: connect, one
//!   64-byte echo, close.
//!
//! After a one-second warm-up, over `seconds`: operations done per second (a server that
//! falls behind does fewer than offered), latency p50/p99 from each operation's actual start
//! (tokio's timers wake on 1 ms ticks: from the scheduled start, latency would measure
//! them), and the CPU time per operation of the server (`--server-pid`, from `/proc`) and of
//! the load generator itself, with how busy each was (share of one core).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use shoal_bench::latency_plot::{STEPS, quantile};
use shoal_bench::{micros, percentile, process_cpu};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::round_trip;

/// Time before the measured window: connections are open and the server warm.
const WARM_UP: Duration = Duration::from_secs(1);

pub struct PacedLoad {
    pub addr: SocketAddr,
    pub conns: usize,
    pub size: usize,
    /// Operations offered per second.
    pub rate: f64,
    pub seconds: f64,
    /// New connections instead of round trips on open ones.
    pub connect: bool,
    pub server_pid: Option<u32>,
}

/// Latencies of the operations scheduled inside the window, from every task.
type Samples = Arc<Mutex<Vec<Duration>>>;

fn record(samples: &Samples, latency: Duration) {
    samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(latency);
}

pub async fn run(load: PacedLoad) -> anyhow::Result<()> {
    anyhow::ensure!(load.rate > 0.0, "--rate must be above 0");
    let duration = Duration::from_secs_f64(load.seconds);
    let samples: Samples = Arc::default();
    let opened = if load.connect {
        Vec::new()
    } else {
        open(load.addr, load.conns).await?
    };
    let start = Instant::now() + WARM_UP;
    let end = start + duration;
    let window = Window { start, end };
    let sampler = tokio::spawn(sample_cpu(window, load.server_pid));
    if load.connect {
        connections(load.addr, load.rate, window, &samples).await?;
    } else {
        round_trips(opened, load.size, load.rate, window, &samples).await?;
    }
    let (server_cpu, client_cpu) = sampler.await??;
    let mut latencies =
        std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    latencies.sort();
    let done = latencies.len() as f64;
    let p50 = percentile(&latencies, 0.5).context("no operation completed")?;
    let p99 = percentile(&latencies, 0.99).context("no operation completed")?;
    let per_op = |cpu: Duration| micros(cpu) / done;
    let busy = |cpu: Duration| cpu.as_secs_f64() / duration.as_secs_f64();
    let mut line = format!(
        "ops_per_sec={:.0} offered_per_sec={:.0} p50_us={:.1} p99_us={:.1} \
         client_cpu_us_per_op={:.2} client_busy={:.3}",
        done / duration.as_secs_f64(),
        load.rate,
        micros(p50),
        micros(p99),
        per_op(client_cpu),
        busy(client_cpu),
    );
    // The distribution for the plot: an HDR histogram in µs (3 significant digits), read at
    // the plot's quantiles as `hdr_K=µs`.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for latency in &latencies {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(us.max(1));
    }
    for k in 0..=STEPS {
        line.push_str(&format!(
            " hdr_{k}={}",
            histogram.value_at_quantile(quantile(k))
        ));
    }
    if let Some(server) = server_cpu {
        line.push_str(&format!(
            " server_cpu_us_per_op={:.2} server_busy={:.3}",
            per_op(server),
            busy(server)
        ));
    }
    println!("{line}");
    Ok(())
}

/// The measured part of the run.
#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    fn holds(self, scheduled: Instant) -> bool {
        scheduled >= self.start && scheduled < self.end
    }
}

/// The CPU time the server (when given) and this process used over `window`.
pub async fn sample_cpu(
    window: Window,
    server: Option<u32>,
) -> anyhow::Result<(Option<Duration>, Duration)> {
    let me = std::process::id();
    let read = |pid: u32| process_cpu(pid).with_context(|| format!("CPU time of process {pid}"));
    tokio::time::sleep_until(window.start).await;
    let server_before = server.map(read).transpose()?;
    let client_before = read(me)?;
    tokio::time::sleep_until(window.end).await;
    let server_used = match (server, server_before) {
        (Some(pid), Some(before)) => Some(read(pid)?.saturating_sub(before)),
        _ => None,
    };
    Ok((server_used, read(me)?.saturating_sub(client_before)))
}

async fn open(addr: SocketAddr, conns: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Each connection sends on its own schedule: its share of `rate`, the connections' sends
/// spread evenly over each period.
async fn round_trips(
    streams: Vec<TcpStream>,
    size: usize,
    rate: f64,
    window: Window,
    samples: &Samples,
) -> anyhow::Result<()> {
    let conns = streams.len().max(1);
    let period = Duration::from_secs_f64(conns as f64 / rate);
    let first = Instant::now();
    let mut workers = Vec::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let samples = Arc::clone(samples);
        let mut scheduled = first + period.mul_f64(i as f64 / conns as f64);
        workers.push(tokio::spawn(async move {
            let message: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
            let mut reply = vec![0u8; size];
            while scheduled < window.end {
                tokio::time::sleep_until(scheduled).await;
                let sent = Instant::now();
                round_trip(&mut stream, &message, &mut reply).await?;
                if window.holds(scheduled) {
                    record(&samples, sent.elapsed());
                }
                scheduled += period;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// A new connection every `1 / rate` seconds: connect, one 64-byte echo, close.
async fn connections(
    addr: SocketAddr,
    rate: f64,
    window: Window,
    samples: &Samples,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let first = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for k in 0u32.. {
        let scheduled = first + interval.mul_f64(f64::from(k));
        if scheduled >= window.end {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let samples = Arc::clone(samples);
        workers.spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            round_trip(&mut stream, &[7u8; 64], &mut [0u8; 64]).await?;
            drop(stream);
            if window.holds(scheduled) {
                record(&samples, started.elapsed());
            }
            anyhow::Ok(())
        });
        // Reap the finished ones as we go: the set stays as small as the connections open.
        while let Some(done) = workers.try_join_next() {
            done??;
        }
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}
