//! The echo plugin through a real server: round trips, large and concurrent transfers,
//! half-close, connection churn without leaks, and `nc` as a client.

mod support;

use std::process::Stdio;

use anyhow::{Context, ensure};
use support::{TestServer, random_bytes, read_to_end};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send `payload` and half-close while reading everything that comes back.
async fn send_all_then_read_to_end(
    client: tokio::net::TcpStream,
    payload: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let (mut reader, mut writer) = client.into_split();
    let sent = payload.to_vec();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await?;
        writer.shutdown().await?;
        anyhow::Ok(())
    });
    let echoed = read_to_end(&mut reader).await?;
    writing.await??;
    Ok(echoed)
}

#[tokio::test]
async fn echo_round_trip() -> anyhow::Result<()> {
    let server = TestServer::start("echo").await?;
    let mut client = server.connect().await?;
    client.write_all(b"hello, shoal\n").await?;
    let mut reply = [0u8; 13];
    client.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"hello, shoal\n");
    drop(client);
    server.wait_idle().await?;
    server.shutdown().await
}

#[tokio::test]
async fn one_mebibyte_of_random_bytes_comes_back_exactly() -> anyhow::Result<()> {
    let server = TestServer::start("echo").await?;
    let payload = random_bytes(1 << 20, 7);
    let echoed = send_all_then_read_to_end(server.connect().await?, &payload).await?;
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ from those sent");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_each_get_every_byte_back() -> anyhow::Result<()> {
    const CLIENTS: u64 = 200;
    const ROUND_TRIPS: u64 = 100;
    let server = TestServer::start("echo").await?;
    let mut clients = Vec::new();
    for client_id in 0..CLIENTS {
        let mut stream = server.connect().await?;
        clients.push(tokio::spawn(async move {
            let mut reply = vec![0u8; 64];
            for round in 0..ROUND_TRIPS {
                let message = random_bytes(64, client_id * 1_000 + round + 1);
                stream.write_all(&message).await?;
                stream.read_exact(&mut reply).await?;
                ensure!(
                    reply == message,
                    "client {client_id} round {round}: wrong bytes"
                );
            }
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    assert_eq!(server.stats.accepted(), CLIENTS);
    server.wait_idle().await?;
    server.shutdown().await
}

#[tokio::test]
async fn two_thousand_connections_in_sequence_leak_no_instance() -> anyhow::Result<()> {
    let server = TestServer::start("echo").await?;
    for i in 0..2_000u32 {
        let mut client = server.connect().await?;
        let message = i.to_be_bytes();
        client.write_all(&message).await?;
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).await?;
        assert_eq!(reply, message);
    }
    server.wait_idle().await?;
    assert_eq!(server.stats.accepted(), 2_000);
    assert_eq!(server.stats.live_instances(), 0);
    assert_eq!(server.stats.faults(), 0);
    server.shutdown().await
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_echo() -> anyhow::Result<()> {
    let server = TestServer::start("echo").await?;
    let mut client = server.connect().await?;
    client.write_all(b"last words").await?;
    client.shutdown().await?;
    let echoed = read_to_end(&mut client).await?;
    assert_eq!(echoed, b"last words");
    server.shutdown().await
}

#[tokio::test]
async fn nc_gets_its_line_back() -> anyhow::Result<()> {
    let server = TestServer::start("echo").await?;
    let mut nc = tokio::process::Command::new("nc")
        // -N: shut down the sending side at the end of stdin, then wait for the server.
        .args(["-N", "127.0.0.1", &server.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run nc (make deps installs it)")?;
    let mut stdin = nc.stdin.take().context("nc stdin")?;
    stdin.write_all(b"hello from nc\n").await?;
    drop(stdin);
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), nc.wait_with_output())
        .await
        .context("nc did not finish")??;
    assert!(output.status.success(), "nc failed: {:?}", output.status);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello from nc\n");
    server.shutdown().await
}

/// The native echo baseline runs behind the same acceptor pool and connection task, and
/// behaves like the Wasm echo plugin.
#[tokio::test]
async fn the_native_echo_baseline_behaves_like_the_plugin() -> anyhow::Result<()> {
    let config = shoal_host::ServerConfig::builder().name("native").build()?;
    let server = TestServer::start_with(shoal_host::native::Echo, config).await?;
    let payload = random_bytes(256 << 10, 5);
    let echoed = send_all_then_read_to_end(server.connect().await?, &payload).await?;
    assert!(echoed == payload, "native echo returned different bytes");
    server.wait_idle().await?;
    assert_eq!(server.stats.accepted(), 1);
    server.shutdown().await
}
