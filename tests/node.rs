//! The node: every listener of a process built from one spec, bound together (a taken
//! address names its listener and leaves nothing listening), served and stopped together,
//! with each listener's settings and counters found by name.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use shoal_host::{
    EndKind, ListenerSpec, Node, NodeError, NodeSpec, PluginSource, RuntimeConfig, ServerConfig,
};
use support::{plugin_path, read_line};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn listener(name: &str, address: SocketAddr, plugin: &str) -> anyhow::Result<ListenerSpec> {
    Ok(ListenerSpec {
        address,
        plugin: PluginSource::File(plugin_path(plugin)),
        config: ServerConfig::builder()
            .name(name)
            .max_connections(8)
            .shutdown_timeout(Duration::from_secs(5))
            .build()?,
    })
}

fn any_port() -> anyhow::Result<SocketAddr> {
    Ok("127.0.0.1:0".parse()?)
}

/// A port nothing listens on right now.
async fn free_port() -> anyhow::Result<SocketAddr> {
    let probe = TcpListener::bind("127.0.0.1:0").await?;
    Ok(probe.local_addr()?)
}

#[tokio::test]
async fn an_address_in_use_names_its_listener_and_leaves_nothing_listening() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0").await?;
    let first = free_port().await?;
    let spec = NodeSpec {
        listeners: vec![
            listener("first", first, "echo")?,
            listener("second", taken.local_addr()?, "echo")?,
        ],
        cache_dir: None,
        ..NodeSpec::default()
    };
    let mut node = Node::from_spec(spec)?;
    let error = node
        .bind()
        .await
        .err()
        .context("the taken address must fail")?;
    let NodeError::Bind {
        listener, address, ..
    } = &error
    else {
        anyhow::bail!("not a bind error: {error}");
    };
    assert_eq!(
        (listener.as_str(), *address),
        ("second", taken.local_addr()?)
    );
    assert!(
        error
            .to_string()
            .starts_with("listener `second`: cannot listen on"),
        "{error}"
    );
    assert!(node.listeners().iter().all(|l| l.local_addr().is_none()));
    assert!(
        TcpStream::connect(first).await.is_err(),
        "the first listener was closed again"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_serves_every_listener_and_stops_them_on_one_shutdown() -> anyhow::Result<()> {
    let spec = NodeSpec {
        listeners: vec![
            listener("echo", any_port()?, "echo")?,
            listener("greeter", any_port()?, "greeter")?,
        ],
        cache_dir: None,
        ..NodeSpec::default()
    };
    let mut node = Node::from_spec(spec)?;
    node.bind().await?;
    let echo = node.listener("echo").context("echo by name")?;
    let greeter = node.listener("greeter").context("greeter by name")?;
    assert_eq!(echo.config().max_connections(), 8);
    let (echo_addr, greeter_addr) = (
        echo.local_addr().context("bound")?,
        greeter.local_addr().context("bound")?,
    );
    let (echo_stats, greeter_stats) = (echo.stats(), greeter.stats());
    assert!(node.listener("nobody").is_none());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(node.serve(async {
        let _ = stopped.await;
    }));
    let mut echo = BufReader::new(TcpStream::connect(echo_addr).await?);
    echo.get_mut().write_all(b"one node\n").await?;
    assert_eq!(read_line(&mut echo).await?, "one node");
    let mut greeted = BufReader::new(TcpStream::connect(greeter_addr).await?);
    assert!(read_line(&mut greeted).await?.starts_with("hello "));

    let _ = stop.send(());
    // The greeter answers its `close(shutdown)`; the echo connection is closed too.
    assert_eq!(read_line(&mut greeted).await?, "bye (shutdown)");
    serving.await??;
    assert_eq!(echo_stats.ended(EndKind::Shutdown), 1);
    assert_eq!(greeter_stats.ended(EndKind::Shutdown), 1);
    assert_eq!((echo_stats.accepted(), greeter_stats.accepted()), (1, 1));
    assert!(TcpStream::connect(echo_addr).await.is_err(), "closed");
    Ok(())
}

#[tokio::test]
async fn the_instance_pool_holds_every_listener_up_to_its_cap() -> anyhow::Result<()> {
    let two = NodeSpec {
        listeners: vec![
            listener("a", any_port()?, "echo")?,
            listener("b", any_port()?, "echo")?,
        ],
        cache_dir: None,
        ..NodeSpec::default()
    };
    let mut node = Node::from_spec(two)?;
    assert_eq!(node.runtime()?.config().max_instances(), 16);

    let mut huge = listener("huge", any_port()?, "echo")?;
    huge.config = ServerConfig::builder()
        .name("huge")
        .max_connections(20_000)
        .build()?;
    let mut node = Node::from_spec(NodeSpec {
        listeners: vec![huge],
        cache_dir: None,
        ..NodeSpec::default()
    })?;
    assert_eq!(
        node.runtime()?.config().max_instances(),
        RuntimeConfig::DEFAULT_MAX_INSTANCES
    );
    Ok(())
}

#[tokio::test]
async fn a_plugin_that_cannot_load_names_its_listener() -> anyhow::Result<()> {
    let mut wrong = listener("wrong", any_port()?, "echo")?;
    wrong.plugin = PluginSource::File(plugin_path("wrong-world"));
    let spec = NodeSpec {
        listeners: vec![listener("fine", any_port()?, "echo")?, wrong],
        cache_dir: None,
        ..NodeSpec::default()
    };
    let error = Node::from_spec(spec).err().context("must fail")?;
    assert!(
        matches!(&error, NodeError::Plugin { listener, .. } if listener == "wrong"),
        "{error}"
    );
    // Named by the path it was given, which ends in the file's name.
    let message = error.to_string();
    assert!(message.starts_with("listener `wrong`: "), "{message}");
    assert!(
        message.contains("wrong-world.wasm does not implement the shoal:plugin world"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_memory_limit_below_the_plugins_initial_memory_is_refused_at_start() -> anyhow::Result<()>
{
    let mut small = listener("small", any_port()?, "echo")?;
    small.config = ServerConfig::builder()
        .name("small")
        .memory_limit(64 << 10)
        .build()?;
    let mut node = Node::from_spec(NodeSpec {
        listeners: vec![small],
        ..NodeSpec::default()
    })?;
    let error = node
        .bind()
        .await
        .err()
        .context("must be refused before serving")?;
    let message = error.to_string();
    assert!(message.starts_with("listener `small`: "), "{message}");
    assert!(message.contains("memory_limit (64KiB)"), "{message}");
    // echo links with a 3-page initial memory (plugins/.cargo/config.toml).
    assert!(message.contains("needs 192KiB"), "{message}");
    assert!(node.listeners().iter().all(|l| l.local_addr().is_none()));
    Ok(())
}

#[tokio::test]
async fn a_pool_too_large_to_reserve_names_the_memory_limit() -> anyhow::Result<()> {
    let mut huge = listener("huge", any_port()?, "echo")?;
    huge.config = ServerConfig::builder()
        .name("huge")
        .max_connections(16_384)
        .memory_limit(4 << 30)
        .build()?;
    let error = Node::from_spec(NodeSpec {
        listeners: vec![huge],
        ..NodeSpec::default()
    })
    .err()
    .context("must be refused")?;
    let message = error.to_string();
    assert!(message.contains("listener `huge`"), "{message}");
    assert!(message.contains("memory_limit"), "{message}");
    assert!(message.contains("address space"), "{message}");
    Ok(())
}
