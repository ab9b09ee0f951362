//! Time limits through a real server: a silent client, one that falls silent after talking,
//! a client that never reads, a guest that waits inside a call.

mod support;

use std::time::Duration;

use shoal_host::ServerConfig;
use support::{
    TestServer, captured_logs, log_lines_with, plugin, read_line, read_to_end, wait_for,
};
use tokio::io::{AsyncWriteExt, BufReader};

#[tokio::test]
async fn a_silent_client_is_closed_with_idle_timeout() -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .name("greeter")
        .idle_timeout(Duration::from_millis(300))
        .build()?;
    let server = TestServer::start_with(plugin("greeter"), config).await?;
    let mut reader = BufReader::new(server.connect().await?);
    assert!(read_line(&mut reader).await?.starts_with("hello "));
    assert_eq!(read_line(&mut reader).await?, "bye (idle-timeout)");
    assert!(read_to_end(&mut reader).await?.is_empty());
    server.wait_idle().await?;
    server.shutdown().await
}

/// The idle timer is moved only when it fires (not at every read): a client that keeps
/// talking past the timeout stays, and once silent it is closed a whole timeout after its
/// last bytes, never sooner.
#[tokio::test]
async fn the_idle_timeout_counts_from_the_last_bytes_the_client_sent() -> anyhow::Result<()> {
    let idle = Duration::from_millis(400);
    let config = ServerConfig::builder()
        .name("greeter")
        .idle_timeout(idle)
        .build()?;
    let server = TestServer::start_with(plugin("greeter"), config).await?;
    let mut reader = BufReader::new(server.connect().await?);
    assert!(read_line(&mut reader).await?.starts_with("hello "));
    let mut last_input = std::time::Instant::now();
    for n in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Taken before the bytes leave: the server's own clock starts later, never sooner.
        last_input = std::time::Instant::now();
        reader
            .get_mut()
            .write_all(format!("line {n}\n").as_bytes())
            .await?;
        let answer = read_line(&mut reader).await?;
        assert!(answer.ends_with(&format!("line {n}")), "{answer:?}");
    }
    assert_eq!(read_line(&mut reader).await?, "bye (idle-timeout)");
    assert!(
        last_input.elapsed() >= idle,
        "closed {:?} after the last bytes, before the idle timeout",
        last_input.elapsed()
    );
    server.shutdown().await
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_at_the_write_timeout() -> anyhow::Result<()> {
    captured_logs();
    let config = ServerConfig::builder()
        .name("greeter")
        .output_buffer_limit(8_000_000)
        .cpu_budget_per_call(Duration::from_secs(5))
        .write_timeout(Duration::from_millis(300))
        .build()?;
    let server = TestServer::start_with(plugin("greeter"), config).await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 << 10)?;
    let mut client = socket.connect(server.addr).await?;
    client.write_all(b"flood\n").await?;
    // The client reads nothing: the server gives up on it, and the guest hears why.
    wait_for("the write timeout", || {
        !log_lines_with(&["close called: limit: write timeout", "plugin=\"greeter\""]).is_empty()
    })
    .await?;
    server.wait_idle().await?;
    assert_eq!(server.stats.faults(), 0);
    drop(client);
    server.shutdown().await
}

#[tokio::test]
async fn a_guest_waiting_inside_a_call_is_stopped_at_the_call_timeout() -> anyhow::Result<()> {
    captured_logs();
    let config = ServerConfig::builder()
        .name("spin")
        .call_timeout(Duration::from_millis(500))
        .build()?;
    let server = TestServer::start_with(plugin("spin"), config).await?;
    let mut sleeper = server.connect().await?;
    let mut bystander = server.connect().await?;
    sleeper.write_all(b"sleep").await?;
    bystander.write_all(b"ping").await?;
    let mut reply = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut bystander, &mut reply).await?;
    assert_eq!(&reply, b"ping");
    assert!(read_to_end(&mut sleeper).await?.is_empty());
    wait_for("the timeout to be counted", || server.stats.faults() == 1).await?;
    let logged = log_lines_with(&["`handle` failed", "ran past its call timeout"]);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    server.shutdown().await
}
