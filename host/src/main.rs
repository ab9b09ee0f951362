//! The `shoal` command: serve a plugin on a TCP port, or check that a file is a valid plugin.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_host::{HandlerFactory, Plugin, Runtime, RuntimeConfig, Server, ServerConfig};
use tokio_util::sync::CancellationToken;

/// The echo plugin, served when `shoal serve` is given no plugin.
const BUNDLED_ECHO: &[u8] = include_bytes!(env!("SHOAL_ECHO_WASM"));

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A TCP server that runs every connection in its own Wasm component"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a plugin: every accepted connection gets a fresh instance of it. With
    /// `--config`, serve every listener of a config file instead.
    Serve {
        /// A config file (shoal.toml) with one or more listeners, each with its own plugin,
        /// limits and capabilities; see shoal.example.toml.
        #[arg(long, conflicts_with_all = ["plugin", "native_echo"])]
        config: Option<PathBuf>,
        /// Address to listen on; port 0 picks a free port (the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Number of acceptor tasks.
        #[arg(long, default_value_t = ServerConfig::default().pool_size())]
        pool_size: usize,
        /// Most connections served at once; more wait in the listen backlog. The Wasm
        /// instance pool is sized to match.
        #[arg(long, default_value_t = ServerConfig::default().max_connections())]
        max_connections: usize,
        /// The plugin component (.wasm); without one, the bundled echo plugin.
        #[arg(conflicts_with = "native_echo")]
        plugin: Option<PathBuf>,
        /// Serve shoal's native Rust echo instead of a plugin: the same acceptor pool and
        /// connection task without the sandbox (the benchmarks' baseline).
        #[arg(long)]
        native_echo: bool,
    },
    /// Check that a component implements the shoal:plugin world, and say what is missing.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log redirected to a file or a pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Serve {
            config: Some(path), ..
        } => serve_config(&path),
        Command::Serve {
            config: None,
            listen,
            pool_size,
            max_connections,
            plugin,
            native_echo,
        } => serve(listen, pool_size, max_connections, plugin, native_echo),
        Command::Check { plugin } => check(&plugin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    listen: SocketAddr,
    pool_size: usize,
    max_connections: usize,
    plugin: Option<PathBuf>,
    native_echo: bool,
) -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .pool_size(pool_size)
        .max_connections(max_connections)
        .build()?;
    if native_echo {
        return serve_with(listen, Server::new(shoal_host::native::Echo, config));
    }
    let instances = u32::try_from(max_connections).context("--max-connections is too large")?;
    let runtime_config = RuntimeConfig::builder().max_instances(instances).build()?;
    let runtime = Runtime::new(runtime_config).context("cannot start the Wasm engine")?;
    let plugin = match plugin {
        Some(path) => Plugin::from_file(&runtime, &path)?,
        None => Plugin::from_bytes(&runtime, "echo", BUNDLED_ECHO)?,
    };
    serve_with(listen, Server::new(plugin, config))
}

fn serve_with<F: HandlerFactory>(listen: SocketAddr, server: Server<F>) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    tokio.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen}; is another server using it? Pick another with --listen (port 0 picks a free one)")
        })?;
        let bound = listener.local_addr()?;
        let shutdown = shutdown_signal().context("cannot install the SIGINT/SIGTERM handlers")?;
        // Tests and scripts wait for this line to know the server is ready.
        println!("listening on {bound}");
        std::io::stdout().flush()?;
        server.serve(listener, shutdown).await?;
        Ok(())
    })
}

/// Serve every listener of a config file from one process, until SIGINT or SIGTERM.
fn serve_config(path: &Path) -> anyhow::Result<()> {
    let specs = shoal_host::config_file::load(path)?;
    // One engine for every listener: its instance pool holds their connections (up to the
    // default pool size: each slot costs kernel memory mappings, and vm.max_map_count bounds
    // them), and its memory slots the largest listener limit (each listener enforces its own).
    let wanted: usize = specs.iter().map(|s| s.config.max_connections()).sum();
    let pool = RuntimeConfig::default().max_instances();
    let instances = u32::try_from(wanted).unwrap_or(u32::MAX).min(pool);
    let memory = specs.iter().map(|s| s.config.memory_limit()).max();
    let runtime_config = RuntimeConfig::builder()
        .max_instances(instances)
        .max_memory_bytes(memory.unwrap_or(RuntimeConfig::default().max_memory_bytes()))
        .build()?;
    let runtime = Runtime::new(runtime_config).context("cannot start the Wasm engine")?;
    let mut servers = Vec::new();
    for spec in specs {
        let name = spec.config.name().to_string();
        let plugin = Plugin::from_file(&runtime, &spec.plugin)
            .with_context(|| format!("listener `{name}`"))?;
        servers.push((spec.address, Server::new(plugin, spec.config)));
    }
    let tokio = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    tokio.block_on(async {
        let mut bound = Vec::new();
        for (address, server) in servers {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!(
                        "listener `{}`: cannot listen on {address}",
                        server.config().name()
                    )
                })?;
            bound.push((listener, server));
        }
        let shutdown = shutdown_signal().context("cannot install the SIGINT/SIGTERM handlers")?;
        let stop = CancellationToken::new();
        let mut running = tokio::task::JoinSet::new();
        for (listener, server) in bound {
            println!(
                "listening on {} ({})",
                listener.local_addr()?,
                server.config().name()
            );
            running.spawn(server.serve(listener, stop.clone().cancelled_owned()));
        }
        std::io::stdout().flush()?;
        shutdown.await;
        stop.cancel();
        while let Some(ended) = running.join_next().await {
            if let Ok(Err(error)) = ended {
                eprintln!("shoal: error: {error:#}");
            }
        }
        Ok(())
    })
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed by this call, before
/// the server announces itself, so a signal sent right after `listening on` is not missed.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn check(path: &PathBuf) -> anyhow::Result<()> {
    let runtime = Runtime::new(RuntimeConfig::builder().max_instances(1).build()?)
        .context("cannot start the Wasm engine")?;
    let plugin = Plugin::from_file(&runtime, path)?;
    println!(
        "ok: {} implements the shoal:plugin world (exports {})",
        plugin.name(),
        shoal_host::HANDLER_EXPORT
    );
    Ok(())
}
