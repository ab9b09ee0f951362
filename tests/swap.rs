//! Hot swap: a listener's plugin replaced while it serves. Open connections stay on the
//! version they started on, new ones get the new version, a plugin that fails its checks
//! never becomes current, and a version is dropped once its last connection ends.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use shoal_host::{
    ListenerSpec, Node, NodeError, NodeHandle, NodeSpec, PluginSource, ServerConfig, SwapError,
};
use support::{log_lines_with, plugin_path, random_bytes, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node serving the echo plugin on 127.0.0.1 port 0 as listener `echo`.
struct Serving {
    addr: std::net::SocketAddr,
    handle: NodeHandle,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), NodeError>>,
}

async fn serve_echo() -> anyhow::Result<Serving> {
    serve(plugin_path("echo"), settings().build()?).await
}

/// The settings of the tests' listener `echo`, to add to.
fn settings() -> shoal_host::ServerConfigBuilder {
    ServerConfig::builder()
        .name("echo")
        .pool_size(4)
        // The node sizes its instance pool by this: three nodes of 16,384 would not fit in
        // one test process's memory mappings.
        .max_connections(400)
        .shutdown_timeout(Duration::from_secs(5))
}

/// A node serving the plugin file `plugin` as listener `echo` with `config`.
async fn serve(plugin: std::path::PathBuf, config: ServerConfig) -> anyhow::Result<Serving> {
    let spec = NodeSpec {
        listeners: vec![ListenerSpec {
            address: "127.0.0.1:0".parse()?,
            plugin: PluginSource::File(plugin),
            config,
        }],
        ..NodeSpec::default()
    };
    let mut node = Node::from_spec(spec)?;
    node.bind().await?;
    let addr = node.listeners()[0].local_addr().context("bound")?;
    let handle = node.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(async {
        let _ = stopped.await;
    }));
    Ok(Serving {
        addr,
        handle,
        stop,
        task,
    })
}

impl Serving {
    async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }

    /// Wait (at most 10 s) until version `number` is current.
    async fn until_current(&self, number: u64) -> anyhow::Result<()> {
        wait_for(&format!("version {number} to be current"), || {
            self.versions()
                .iter()
                .any(|(n, _, current)| *n == number && *current)
        })
        .await
    }

    /// The listener's versions as (number, live connections, current).
    fn versions(&self) -> Vec<(u64, usize, bool)> {
        self.handle
            .versions("echo")
            .unwrap_or_default()
            .iter()
            .map(|v| (v.number, v.live_connections, v.current))
            .collect()
    }
}

/// Send `bytes` and read as many back.
async fn echo(client: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    client.write_all(bytes).await?;
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut back))
        .await
        .context("no echo in 10 s")??;
    Ok(back)
}

/// Connect, and say which version answers: version 2 greets with `v2\n` at once.
async fn connect_and_tell_version(addr: std::net::SocketAddr) -> anyhow::Result<(TcpStream, u64)> {
    let mut client = TcpStream::connect(addr).await?;
    // Version 1 says nothing until it is sent something: an echo of one byte tells them apart.
    let first = echo(&mut client, b"?").await?;
    match first.as_slice() {
        b"?" => Ok((client, 1)),
        b"v" => {
            let mut rest = [0u8; 3];
            client.read_exact(&mut rest).await?;
            ensure!(&rest == b"2\n?", "a v2 greeting then the echo: {rest:?}");
            Ok((client, 2))
        }
        other => anyhow::bail!("unexpected first byte {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_keep_their_version_and_new_ones_get_the_new_one() -> anyhow::Result<()> {
    let server = serve_echo().await?;
    let mut old = Vec::new();
    for _ in 0..20 {
        let (client, version) = connect_and_tell_version(server.addr).await?;
        ensure!(version == 1);
        old.push(client);
    }
    assert_eq!(server.versions(), vec![(1, 20, true)]);
    let swapped = server
        .handle
        .swap_file("echo", plugin_path("echo-v2"))
        .await?;
    assert_eq!((swapped.number, swapped.current), (2, true));
    assert_eq!(swapped.plugin, "echo-v2");
    assert_eq!(server.versions(), vec![(1, 20, false), (2, 0, true)]);
    for client in &mut old {
        assert_eq!(echo(client, b"still v1").await?, b"still v1");
    }
    let (mut new, version) = connect_and_tell_version(server.addr).await?;
    assert_eq!(version, 2);
    assert_eq!(echo(&mut new, b"on v2").await?, b"on v2");
    drop(old);
    // Version 1 is dropped once its last connection has ended.
    wait_for("version 1 to go", || {
        server.versions() == vec![(2, 1, true)]
    })
    .await?;
    drop(new);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_its_checks_never_becomes_current() -> anyhow::Result<()> {
    support::captured_logs();
    let server = serve_echo().await?;
    let garbage = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("swap-garbage-{}.wasm", std::process::id()));
    std::fs::write(&garbage, b"not a plugin at all")?;
    let refusal = server.handle.swap_file("echo", &garbage).await;
    let Err(NodeError::Plugin { .. }) = refusal else {
        panic!("garbage is not loaded: {refusal:?}");
    };
    let refusal = server
        .handle
        .swap_file("echo", plugin_path("wrong-world"))
        .await;
    let Err(NodeError::Plugin { error, .. }) = refusal else {
        panic!("another world is not loaded: {refusal:?}");
    };
    assert!(error.to_string().contains("does not export"), "{error}");
    let refusal = server
        .handle
        .swap_file("echo", plugin_path("trap-init"))
        .await;
    let Err(NodeError::Swap {
        error: SwapError::Probe { export, .. },
        ..
    }) = refusal
    else {
        panic!("a plugin that traps in init fails its probe: {refusal:?}");
    };
    assert_eq!(export, "init");
    std::fs::remove_file(&garbage)?;
    // Version 1 still serves, and is still the only one.
    assert_eq!(server.versions(), vec![(1, 0, true)]);
    let (_client, version) = connect_and_tell_version(server.addr).await?;
    assert_eq!(version, 1);
    let logged = log_lines_with(&["not swapped", "trap-init"]);
    assert!(!logged.is_empty(), "the refusal is logged");
    let unknown = server
        .handle
        .swap_file("nope", plugin_path("echo-v2"))
        .await;
    assert!(
        matches!(unknown, Err(NodeError::NoSuchListener(_))),
        "{unknown:?}"
    );
    drop(_client);
    server.shutdown().await
}

/// A connection that echoes random bytes until told to stop, checking every byte; returns
/// how many round trips it made.
async fn echo_until(
    mut client: TcpStream,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<usize> {
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let bytes = random_bytes(1 + (seed as usize + round * 37) % 2000, seed ^ round as u64);
        let back = echo(&mut client, &bytes).await?;
        ensure!(back == bytes, "round {round}: the echo differs");
        round += 1;
    }
    Ok(round)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_under_load_loses_no_connection_and_no_byte() -> anyhow::Result<()> {
    // Served from a file of its own, watched, and replaced by a rename as a deploy would.
    let (folder, live_file, server, _watch) = serve_a_watched_copy("load").await?;
    let stop = Arc::new(AtomicBool::new(false));
    // 200 live connections on version 1, echoing random bytes the whole time.
    let mut live = Vec::new();
    for seed in 0..200u64 {
        let (client, version) = connect_and_tell_version(server.addr).await?;
        ensure!(version == 1);
        live.push(tokio::spawn(echo_until(client, seed, Arc::clone(&stop))));
    }
    // And a stream of new connections, each noting which version answered and whether the
    // swap had completed before it connected.
    let swapped = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let newcomers = {
        let (stop, swapped, opened) =
            (Arc::clone(&stop), Arc::clone(&swapped), Arc::clone(&opened));
        let addr = server.addr;
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let after_swap = swapped.load(Ordering::Acquire);
                let (mut client, version) = connect_and_tell_version(addr).await?;
                let bytes = random_bytes(512, opened.fetch_add(1, Ordering::Relaxed) as u64);
                ensure!(
                    echo(&mut client, &bytes).await? == bytes,
                    "a newcomer's echo differs"
                );
                seen.push((after_swap, version));
            }
            anyhow::Ok(seen)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    deploy(&live_file, "echo-v2")?;
    server.until_current(2).await?;
    swapped.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for connection in live {
        let rounds = connection.await??;
        ensure!(rounds > 0, "every live connection kept echoing");
    }
    let seen = newcomers.await??;
    let after: Vec<u64> = seen
        .iter()
        .filter(|(after, _)| *after)
        .map(|(_, v)| *v)
        .collect();
    ensure!(!after.is_empty(), "connections were opened after the swap");
    ensure!(
        after.iter().all(|v| *v == 2),
        "every connection opened after the swap got v2"
    );
    ensure!(
        seen.iter().any(|(after, v)| !after && *v == 1),
        "connections opened before the swap got v1"
    );
    server.shutdown().await?;
    std::fs::remove_dir_all(&folder)?;
    Ok(())
}

/// A copy of the echo plugin in a folder of `name`'s own, served as listener `echo` and
/// watched: the folder, the file, the node and the watch.
async fn serve_a_watched_copy(
    name: &str,
) -> anyhow::Result<(
    std::path::PathBuf,
    std::path::PathBuf,
    Serving,
    shoal_host::PluginWatch,
)> {
    let folder = scratch_folder(name)?;
    let live = folder.join("echo.wasm");
    std::fs::copy(plugin_path("echo"), &live)?;
    let server = serve(live.clone(), settings().build()?).await?;
    let watch = server.handle.watch()?;
    Ok((folder, live, server, watch))
}

/// Put the plugin `name` in place of `live` as a deploy tool does: a temporary file beside
/// it, then a rename over it.
fn deploy(live: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let temporary = live.with_extension("wasm.tmp");
    std::fs::copy(plugin_path(name), &temporary)?;
    std::fs::rename(&temporary, live)?;
    Ok(())
}

/// A folder of this test's own, emptied first.
fn scratch_folder(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("swap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder)?;
    Ok(folder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_replaced_by_a_rename_becomes_the_new_version() -> anyhow::Result<()> {
    let (folder, live, server, _watch) = serve_a_watched_copy("rename").await?;
    let (mut old, version) = connect_and_tell_version(server.addr).await?;
    assert_eq!(version, 1);
    deploy(&live, "echo-v2")?;
    server.until_current(2).await?;
    let (_new, version) = connect_and_tell_version(server.addr).await?;
    assert_eq!(version, 2);
    assert_eq!(echo(&mut old, b"kept v1").await?, b"kept v1");
    // Rewritten in place with the same bytes: no new version.
    std::fs::write(&live, std::fs::read(plugin_path("echo-v2"))?)?;
    tokio::time::sleep(shoal_host::SETTLE * 3).await;
    assert_eq!(server.versions().last().map(|v| v.0), Some(2));
    // A broken file written in place is refused; version 2 stays.
    std::fs::write(&live, b"half a plugin")?;
    tokio::time::sleep(shoal_host::SETTLE * 3).await;
    assert_eq!(
        server.versions().last().map(|v| (v.0, v.2)),
        Some((2, true))
    );
    drop((old, _new));
    server.shutdown().await?;
    std::fs::remove_dir_all(&folder)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_in_a_crash_loop_is_rolled_back_and_not_taken_again() -> anyhow::Result<()> {
    support::captured_logs();
    // Rolled back once more than half of its first 4 connections fault: at the third.
    let server = serve(plugin_path("echo"), settings().rollback(4, 0.5).build()?).await?;
    let addr = server.addr;
    // trap-on passes its probe (its `init` is fine) and traps on any chunk with "trap".
    let swapped = server
        .handle
        .swap_file("echo", plugin_path("trap-on"))
        .await?;
    assert_eq!(swapped.number, 2);
    for n in 0..3 {
        let mut client = TcpStream::connect(addr).await?;
        client.write_all(b"trap\n").await?;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .with_context(|| format!("connection {n} ends at its trap"))??;
    }
    server.until_current(1).await.context("the rollback")?;
    // Each connection's log line says which version it ran.
    let trapped = log_lines_with(&["trapped", "version=2"]);
    assert!(!trapped.is_empty(), "the trap's log line names version 2");
    assert!(!log_lines_with(&["rolled back to version 1"]).is_empty());
    // Version 1 serves again: "trap" is echoed, not trapped on.
    let mut client = TcpStream::connect(addr).await?;
    assert_eq!(echo(&mut client, b"trap\n").await?, b"trap\n");
    // The same content is refused now; another is taken.
    let again = server
        .handle
        .swap_file("echo", plugin_path("trap-on"))
        .await;
    assert!(
        matches!(
            again,
            Err(NodeError::Swap {
                error: SwapError::RolledBack { .. },
                ..
            })
        ),
        "{again:?}"
    );
    let next = server
        .handle
        .swap_file("echo", plugin_path("echo-v2"))
        .await?;
    assert!(next.current && next.number == 3, "{next:?}");
    drop(client);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_a_replaced_version_are_closed_at_the_drain_deadline() -> anyhow::Result<()>
{
    // The greeter says goodbye in `close`: its last output must reach the client.
    let config = settings()
        .drain_timeout(Duration::from_millis(300))
        .build()?;
    let server = serve(plugin_path("greeter"), config).await?;
    let addr = server.addr;
    let mut old = TcpStream::connect(addr).await?;
    let mut greeting = [0u8; 6];
    old.read_exact(&mut greeting).await?;
    assert_eq!(&greeting, b"hello ");
    server
        .handle
        .swap_file("echo", plugin_path("echo-v2"))
        .await?;
    let (mut new, version) = connect_and_tell_version(addr).await?;
    assert_eq!(version, 2);
    // Within the deadline and a margin, the old connection is closed with its goodbye.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut rest))
        .await
        .context("the old connection is closed at the drain deadline")??;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("bye (upgrade)\n"), "{rest:?}");
    // The new version's connection is not touched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(echo(&mut new, b"still here").await?, b"still here");
    assert_eq!(server.versions(), vec![(2, 1, true)]);
    drop(new);
    server.shutdown().await
}
