//! `loadgen handoff`: many chat members with names, the served chat plugin replaced by a
//! new build with a rename (`handoff = "immediate"` on the listener): when the new build
//! first answers, and whether every member then runs it, still connected. (What each move
//! took, the server logs: `shoal-bench` reads it.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::swap::replace;

/// What one run asks for.
pub struct HandoffLoad {
    pub addr: SocketAddr,
    pub conns: usize,
    /// The file the server serves (and watches), and the build put in its place.
    pub live: PathBuf,
    pub next: PathBuf,
    /// What the next build's `/version` says.
    pub next_name: String,
}

type Member = BufReader<TcpStream>;

/// How often the watching member asks which build serves it.
const POLL: Duration = Duration::from_millis(10);

pub async fn run(load: HandoffLoad) -> anyhow::Result<()> {
    let mut members = Vec::with_capacity(load.conns);
    for i in 0..load.conns {
        let stream = TcpStream::connect(load.addr).await?;
        stream.set_nodelay(true)?;
        let mut member = BufReader::new(stream);
        line_starting(&mut member, "* welcome").await?;
        member
            .get_mut()
            .write_all(format!("/nick m{i}\n").as_bytes())
            .await?;
        line_starting(&mut member, "* you are now").await?;
        members.push(member);
    }
    let renamed = Instant::now();
    replace(&load.live, &load.next)?;
    // The members stay quiet while they move (as most members of a room are); one of them
    // asks which build serves it until the new one answers.
    let watcher = members.last_mut().context("no members")?;
    while version(watcher).await? != load.next_name {
        ensure!(
            renamed.elapsed() < Duration::from_secs(120),
            "not moved in 120 s"
        );
        tokio::time::sleep(POLL).await;
    }
    let first_moved = renamed.elapsed();
    // Then every member must be served by the new build, still connected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut moved = 0u64;
    let mut failed = 0u64;
    for member in &mut members {
        match version(member).await {
            Ok(name) if name == load.next_name => moved += 1,
            Ok(_) => {}
            Err(_) => failed += 1,
        }
    }
    println!(
        "moved={moved} failed_conns={failed} first_moved_ms={:.1}",
        first_moved.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Which build serves `member` (`/version` answers `* NAME`).
async fn version(member: &mut Member) -> anyhow::Result<String> {
    member.get_mut().write_all(b"/version\n").await?;
    let answer = line_starting(member, "* chat").await?;
    Ok(answer.trim_start_matches("* ").to_string())
}

/// The next line that starts with `prefix` (others' joins and renames pass by).
async fn line_starting(member: &mut Member, prefix: &str) -> anyhow::Result<String> {
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(60), member.read_line(&mut line))
            .await
            .context("no line in 60 s")??;
        ensure!(read > 0, "the server closed the connection");
        let line = line.trim_end();
        if line.starts_with(prefix) {
            return Ok(line.to_string());
        }
    }
}
