//! `shoal serve --config` re-reads its config on SIGHUP: changed settings apply to new
//! connections, a listener's new plugin file is swapped in, a listener added starts, a listener
//! removed stops accepting, and a config that does not parse changes nothing.

mod support;

use std::time::Duration;

use anyhow::Context;
use support::{ShoalProcess, plugin_path, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn listener(name: &str, address: &str, plugin: &str, idle: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\naddress = \"{address}\"\nplugin = \"{}\"\n\
         max_connections = 100\nidle_timeout = \"{idle}\"\n",
        plugin_path(plugin).display()
    )
}

/// A port free now (bound and released), for a listener a reload adds.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn echoes(addr: std::net::SocketAddr) -> anyhow::Result<bool> {
    let Ok(mut client) = TcpStream::connect(addr).await else {
        return Ok(false);
    };
    client.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back)).await;
    Ok(matches!(read, Ok(Ok(_))) && &back == b"ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_settings_adds_and_removes_listeners_and_ignores_a_broken_config()
-> anyhow::Result<()> {
    let config = listener("main", "127.0.0.1:0", "echo", "1h")
        + &listener("old", "127.0.0.1:0", "echo", "1h");
    let server = ShoalProcess::serve_config("reload", &config, 2).await?;
    let main = *server.addrs.get("main").context("main")?;
    let old = *server.addrs.get("old").context("old")?;
    assert!(echoes(old).await?);
    let mut before = TcpStream::connect(main).await?;
    // main: a short idle timeout, now; old: removed; added: new on a port of its own.
    let port = free_port()?;
    let reloaded = listener("main", &main.to_string(), "echo-v2", "300ms")
        + &listener("added", &format!("127.0.0.1:{port}"), "echo", "1h");
    std::fs::write(&server.config, reloaded)?;
    server.signal("HUP").await?;
    let added: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_for("the added listener", || {
        server.log().contains("added from the config")
    })
    .await?;
    assert!(echoes(added).await?, "the added listener serves");
    wait_for("the removed listener to stop", || {
        std::net::TcpStream::connect(old).is_err()
    })
    .await?;
    // A new connection to main gets the new plugin (it greets `v2`) and the new idle
    // timeout: closed after 300 ms of silence.
    wait_for("version 2 of main", || {
        server.log().contains("version 2 is current")
    })
    .await?;
    let mut after = TcpStream::connect(main).await?;
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), after.read_to_end(&mut greeting))
        .await
        .context("the new idle timeout closes a new connection")??;
    assert_eq!(greeting, b"v2\n");
    // The connection from before keeps the old one (an hour).
    before.write_all(b"still").await?;
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), before.read_exact(&mut back)).await??;
    assert_eq!(&back, b"still");
    // A config that does not parse, or names a value out of bounds, changes nothing; the
    // log names the file, and the listener and field.
    std::fs::write(&server.config, "[[listener]]\nname = 7\n")?;
    server.signal("HUP").await?;
    wait_for("the refusal", || server.log().contains("nothing changed")).await?;
    let out_of_bounds = listener("main", &main.to_string(), "echo", "1h") + "pool_size = 0\n";
    std::fs::write(&server.config, out_of_bounds)?;
    server.signal("HUP").await?;
    wait_for("the second refusal", || {
        server.log().contains(
            "listener `main`: invalid `pool_size`: must be between 1 and 1024; nothing changed",
        )
    })
    .await?;
    assert!(echoes(added).await?, "still serving after a broken config");
    drop(before);
    let log = server.terminate().await?;
    assert!(log.contains("SIGHUP: reloading"), "{log}");
    Ok(())
}
