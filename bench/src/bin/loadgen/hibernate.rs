//! `loadgen hibernate`: a large chat room whose members sit idle (served with
//! `announce = "off"`, so that a join wakes nobody). The members join, stay quiet for
//! `settle` seconds (past the listener's `hibernate_after`, if it has one), and the load
//! generator prints `ready` — the moment `shoal-bench` reads the server's memory — then
//! waits for a line on stdin. Then: `samples` members in turn each ask `/version` (first
//! byte in → first byte out: a wake-up, when they sleep; each a different member, idle
//! since the joins); then, `settle` seconds later, the first member sends `lines` lines that every other member reads. One
//! `key=value` line: wake-up latency p50/p99 and messages delivered per second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use shoal_bench::{micros, percentile};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What one run asks for.
pub struct HibernateLoad {
    pub addr: SocketAddr,
    pub conns: usize,
    pub samples: usize,
    pub lines: usize,
    pub settle: Duration,
}

type Member = BufReader<TcpStream>;

pub async fn run(load: HibernateLoad) -> anyhow::Result<()> {
    ensure!(load.conns >= 2, "a room needs a speaker and a listener");
    let mut members: Vec<Member> = Vec::with_capacity(load.conns);
    for _ in 0..load.conns {
        let stream = TcpStream::connect(load.addr).await?;
        stream.set_nodelay(true)?;
        let mut member = BufReader::new(stream);
        let welcome = read_line(&mut member).await?;
        ensure!(
            welcome.starts_with("* welcome"),
            "not the chat: {welcome:?}"
        );
        members.push(member);
    }
    tokio::time::sleep(load.settle).await;
    println!("ready conns={}", members.len());
    let mut go = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;

    // Wake-up latency: members spread over the room, one at a time, each idle since the
    // joins.
    let step = (load.conns / load.samples.max(1)).max(1);
    let mut latencies = Vec::with_capacity(load.samples);
    for member in members.iter_mut().step_by(step).take(load.samples) {
        let asked = Instant::now();
        member.get_mut().write_all(b"/version\n").await?;
        let answer = read_line(member).await?;
        latencies.push(asked.elapsed());
        ensure!(answer.starts_with("* chat"), "/version answered {answer:?}");
    }
    latencies.sort();

    // A broadcast to a room at rest: the first member's lines, read by every other.
    tokio::time::sleep(load.settle).await;
    let mut speaker = members.remove(0);
    let listeners = members.len();
    let started = Instant::now();
    let text: String = (0..load.lines).map(|i| format!("line {i}\n")).collect();
    speaker.get_mut().write_all(text.as_bytes()).await?;
    let mut readers = tokio::task::JoinSet::new();
    for mut listener in members {
        let lines = load.lines;
        readers.spawn(async move {
            for i in 0..lines {
                let line = read_line(&mut listener).await?;
                ensure!(line.ends_with(&format!(": line {i}")), "got {line:?}");
            }
            anyhow::Ok(listener)
        });
    }
    let mut members = Vec::with_capacity(listeners);
    while let Some(read) = readers.join_next().await {
        members.push(read??);
    }
    let took = started.elapsed();
    let delivered = (listeners * load.lines) as f64 / took.as_secs_f64();
    println!(
        "wake_p50_us={:.1} wake_p99_us={:.1} delivered_per_sec={delivered:.0}",
        micros(percentile(&latencies, 0.5).context("no samples")?),
        micros(percentile(&latencies, 0.99).context("no samples")?),
    );
    drop((speaker, members));
    Ok(())
}

async fn read_line(member: &mut Member) -> anyhow::Result<String> {
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(60), member.read_line(&mut line))
        .await
        .context("no line in 60 s")??;
    ensure!(read > 0, "the server closed the connection");
    Ok(line.trim_end().to_string())
}
