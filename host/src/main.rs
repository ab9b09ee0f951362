//! The `shoal` command: serve plugins on TCP ports, or check that a file is a valid plugin.
//! It only reads the command line, builds a [`Node`] and runs it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use shoal_host::{
    AdminSpec, AdminToken, ListenerSpec, LogFormat, MemoryInit, Node, NodeError, NodeSpec, Plugin,
    PluginSource, Runtime, RuntimeConfig, Server, ServerConfig, Tls, TlsFiles,
};

// The server's allocator: mimalloc, whose per-thread free lists serve the store, instance and
// task structures every connection allocates and frees without glibc's bin searches and
// consolidations. At 5,000 connections/s it cut the server's CPU per connection by ~7 % for
// the Wasm echo and ~5 % for the native one, leaving round trips and the memory of a sleeping
// connection as they were (BENCHMARKS.md, issue 16).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin_client;

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
    /// How the log (on stderr) is written: `text` for people, `json` for machines (one
    /// object per line) [default: the config file's `log_format`, else text].
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

impl Cli {
    /// The log format: the command line's, else the config file's, else text.
    fn log_format(&self) -> LogFormat {
        if let Some(format) = self.log_format.as_deref().and_then(LogFormat::named) {
            return format;
        }
        let Command::Serve {
            config: Some(path), ..
        } = &self.command
        else {
            return LogFormat::Text;
        };
        // A file that cannot be read is reported when it is loaded, in the default format.
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| LogFormat::of_config(&text))
            .unwrap_or_default()
    }
}

/// The log on stderr, at `RUST_LOG`'s levels (default `info`).
fn start_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Fields beside `message` at the top of each object; no span list: connections log
        // their fields on their own lines (`conn`, `peer`, `plugin`, `version`).
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // Colours for a terminal only: a log redirected to a file or a pipe stays plain text.
        _ => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve a plugin: every accepted connection gets a fresh instance of it. With
    /// `--config`, serve every listener of a config file instead.
    Serve {
        /// A config file (shoal.toml) with one or more listeners, each with its own plugin,
        /// limits and capabilities; see shoal.example.toml.
        #[arg(long, conflicts_with_all = ["plugin", "native_echo", "max_instances", "hibernate_after", "tls_cert"])]
        config: Option<PathBuf>,
        /// Address to listen on; port 0 picks a free port (the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Number of acceptor tasks.
        #[arg(long, default_value_t = ServerConfig::default().pool_size())]
        pool_size: usize,
        /// Most connections served at once; more wait in the listen backlog. The Wasm
        /// instance pool is sized to match, up to 16,384.
        #[arg(long, default_value_t = ServerConfig::default().max_connections())]
        max_connections: usize,
        /// Most connections awake at once, each with its instance; the others must
        /// hibernate (see --hibernate-after) [default: max-connections].
        #[arg(long)]
        max_instances: Option<usize>,
        /// Hibernate a connection idle this long (no byte, no message), such as "30s", if its
        /// plugin exports `handoff`: its state is kept and its instance given back until the
        /// next byte or message [default: never].
        #[arg(long, value_name = "DURATION", value_parser = shoal_host::parse_duration)]
        hibernate_after: Option<Duration>,
        /// The plugin component (.wasm); without one, the bundled echo plugin.
        #[arg(conflicts_with = "native_echo")]
        plugin: Option<PathBuf>,
        /// Serve shoal's native Rust echo instead of a plugin: the same acceptor pool and
        /// connection task without the sandbox (the benchmarks' baseline).
        #[arg(long)]
        native_echo: bool,
        #[command(flatten)]
        tls: TlsArgs,
        /// Serve metrics (GET /metrics, Prometheus text format) on this loopback address
        /// [default: the config file's `[admin] address`, else none].
        #[arg(long, value_name = "ADDR", value_parser = shoal_host::admin_address)]
        admin: Option<SocketAddr>,
        /// The file holding the admin listener's token, which deploys and rollbacks must
        /// present [default: the config file's `[admin] token_file`, else none: no changes
        /// through the admin listener, and it listens on loopback only].
        #[arg(long, value_name = "FILE", requires = "admin")]
        admin_token_file: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
        /// Do not watch plugin files: by default, a plugin file that is rewritten (or
        /// replaced by a rename) becomes its listener's new version once it passes a probe,
        /// while open connections finish on the old one.
        #[arg(long)]
        no_watch: bool,
    },
    /// Print what a running server's admin listener reports: each listener's address,
    /// plugin version, connections and faults, and the latest faults and limit hits.
    Status {
        #[command(flatten)]
        admin: admin_client::Target,
    },
    /// Upload a new version of a listener's plugin to a running server, which checks and
    /// probes it as it does a changed file; prints the version now current, or why not.
    Deploy {
        #[command(flatten)]
        admin: admin_client::Target,
        /// The listener's name.
        listener: String,
        /// The plugin component (.wasm).
        plugin: PathBuf,
    },
    /// Make a listener's previous plugin version current again on a running server.
    Rollback {
        #[command(flatten)]
        admin: admin_client::Target,
        /// The listener's name.
        listener: String,
    },
    /// Check that a component implements the shoal:plugin world, and say what is missing.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
    },
}

/// TLS for the one listener of `shoal serve` (a config file has `[listener.tls]`).
#[derive(Args, Clone)]
struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM, the server's certificate first); needs
    /// --tls-key. Read again on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate issued by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files to load, if TLS was asked for.
    fn files(&self) -> Option<TlsFiles> {
        let (cert, key) = (self.tls_cert.as_ref()?, self.tls_key.as_ref()?);
        let mut files = TlsFiles::new(cert, key);
        files.client_ca.clone_from(&self.tls_client_ca);
        Some(files)
    }
}

/// Where compiled plugins are kept between starts.
#[derive(Args)]
struct CacheArgs {
    /// Keep compiled plugins in DIR [default: the config file's `cache_dir`, else
    /// $XDG_CACHE_HOME/shoal or ~/.cache/shoal].
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// Compile every plugin at start; use no compile cache.
    #[arg(long)]
    no_cache: bool,
}

impl CacheArgs {
    /// The folder to use, given the config file's choice (if any).
    fn dir(self, from_file: Option<PathBuf>) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir
            .or(from_file)
            .or_else(shoal_host::default_cache_dir)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    start_logging(cli.log_format());
    let result = match cli.command {
        Command::Serve {
            config: Some(path),
            cache,
            no_watch,
            admin,
            admin_token_file,
            ..
        } => serve_config(&path, cache, Watch(!no_watch), (admin, admin_token_file)),
        Command::Serve {
            config: None,
            listen,
            pool_size,
            max_connections,
            max_instances,
            hibernate_after,
            plugin,
            native_echo,
            tls,
            admin,
            admin_token_file,
            cache,
            no_watch,
        } => {
            let one = OneListener {
                listen,
                pool_size,
                max_connections,
                max_instances,
                hibernate_after,
                plugin,
                native_echo,
                tls,
            };
            let admin = admin_settings((admin, admin_token_file), None);
            admin.and_then(|admin| serve_one(one, cache, Watch(!no_watch), admin))
        }
        Command::Check { plugin } => check(&plugin),
        Command::Status { admin } => admin_client::print_status(&admin),
        Command::Deploy {
            admin,
            listener,
            plugin,
        } => admin_client::deploy(&admin, &listener, &plugin),
        Command::Rollback { admin, listener } => admin_client::rollback(&admin, &listener),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `shoal serve [PLUGIN.wasm | --native-echo]`: a node of one listener.
struct OneListener {
    listen: SocketAddr,
    pool_size: usize,
    max_connections: usize,
    max_instances: Option<usize>,
    hibernate_after: Option<Duration>,
    plugin: Option<PathBuf>,
    native_echo: bool,
    tls: TlsArgs,
}

/// Whether plugin files are watched for new versions.
#[derive(Clone, Copy)]
struct Watch(bool);

fn serve_one(
    one: OneListener,
    cache: CacheArgs,
    watch: Watch,
    admin: Option<Admin>,
) -> anyhow::Result<()> {
    let config = one.config()?;
    if one.native_echo {
        let mut node = Node::new(RuntimeConfig::default());
        node.add(one.listen, Server::new(shoal_host::native::Echo, config))?;
        // On SIGHUP the command line is read again: the certificates.
        let reload = Reload::Settings(Box::new(move || one.config()));
        return run(node, Announce::AddressOnly, watch, reload, admin);
    }
    let cache_dir = cache.dir(None);
    let spec = one.spec(config, cache_dir.clone());
    // One listener, named by nobody: its errors need no `listener `default`:` prefix.
    let node = Node::from_spec(spec).map_err(|error| match error {
        NodeError::Plugin { error, .. } => anyhow::Error::new(error),
        other => anyhow::Error::new(other),
    })?;
    // On SIGHUP the command line is read again: the certificates, and the plugin file.
    let reload = Reload::Spec(Box::new(move || {
        Ok(one.spec(one.config()?, cache_dir.clone()))
    }));
    run(node, Announce::AddressOnly, watch, reload, admin)
}

impl OneListener {
    /// The listener's settings, its TLS files read now.
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::builder()
            .pool_size(self.pool_size)
            .max_connections(self.max_connections);
        if let Some(instances) = self.max_instances {
            config = config.max_instances(instances);
        }
        if let Some(after) = self.hibernate_after {
            config = config.hibernate_after(after);
        }
        if let Some(files) = self.tls.files() {
            config = config.tls(Tls::load(files)?);
        }
        Ok(config.build()?)
    }

    /// A node of this one listener, with `config`.
    fn spec(&self, config: ServerConfig, cache_dir: Option<PathBuf>) -> NodeSpec {
        let plugin = match &self.plugin {
            Some(path) => PluginSource::File(path.clone()),
            None => PluginSource::Bytes {
                name: "echo".into(),
                bytes: Bytes::from_static(BUNDLED_ECHO),
            },
        };
        NodeSpec {
            listeners: vec![ListenerSpec {
                address: self.listen,
                plugin,
                config,
            }],
            cache_dir,
            ..NodeSpec::default()
        }
    }
}

/// What SIGHUP reads again.
enum Reload {
    /// The spec this makes: a config file read again, or the command line's listener with
    /// its TLS files read again.
    Spec(Box<dyn Fn() -> anyhow::Result<NodeSpec> + Send>),
    /// The settings of the one listener of native code (the native echo), its TLS files
    /// read again.
    Settings(Box<dyn Fn() -> anyhow::Result<ServerConfig> + Send>),
}

/// `shoal serve --config FILE`: every listener of the file in one node.
fn serve_config(
    path: &Path,
    cache: CacheArgs,
    watch: Watch,
    admin: (Option<SocketAddr>, Option<PathBuf>),
) -> anyhow::Result<()> {
    let mut spec = NodeSpec::load(path)?;
    let admin = admin_settings(admin, spec.admin.take())?;
    let cache_dir = cache.dir(spec.cache_dir.take());
    spec.cache_dir.clone_from(&cache_dir);
    let file = path.to_path_buf();
    let reload = Reload::Spec(Box::new(move || {
        let mut spec = NodeSpec::load(&file)?;
        spec.cache_dir.clone_from(&cache_dir);
        tracing::info!(file = %file.display(), "SIGHUP: reloading the config");
        Ok(spec)
    }));
    run(
        Node::from_spec(spec)?,
        Announce::WithName,
        watch,
        reload,
        admin,
    )
}

/// The admin listener to start: where, and the token its changes need.
struct Admin {
    address: SocketAddr,
    token: Option<AdminToken>,
}

/// The admin listener the command line (`--admin`, `--admin-token-file`) and the config
/// file's `[admin]` ask for, the command line first; its token read now.
fn admin_settings(
    (address, token_file): (Option<SocketAddr>, Option<PathBuf>),
    from_file: Option<AdminSpec>,
) -> anyhow::Result<Option<Admin>> {
    let (address, token_file) = match (address, from_file) {
        (Some(address), from_file) => (
            address,
            token_file.or_else(|| from_file.and_then(|spec| spec.token_file)),
        ),
        (None, Some(spec)) => (spec.address, spec.token_file),
        (None, None) => return Ok(None),
    };
    let token = match &token_file {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the admin token file {}", file.display()))?;
            Some(
                AdminToken::new(&text)
                    .map_err(|reason| anyhow::anyhow!("{}: {reason}", file.display()))?,
            )
        }
    };
    shoal_host::admin_exposure(address, token.is_some())
        .map_err(|reason| anyhow::anyhow!("--admin {reason}"))?;
    Ok(Some(Admin { address, token }))
}

/// How the ready lines name each listener.
#[derive(Clone, Copy)]
enum Announce {
    /// `listening on ADDR`: the one-listener form.
    AddressOnly,
    /// `listening on ADDR (NAME)`: one line per listener of a config file.
    WithName,
}

/// Bind every listener (and the admin listener, if asked), say where each listens, serve
/// until SIGINT or SIGTERM; on SIGHUP, apply what `reload` reads again.
fn run(
    mut node: Node,
    announce: Announce,
    watch: Watch,
    reload: Reload,
    admin: Option<Admin>,
) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    tokio.block_on(async {
        match (node.bind().await, announce) {
            (Ok(()), _) => {}
            (Err(NodeError::Bind { address, error, .. }), Announce::AddressOnly) => {
                anyhow::bail!(
                    "cannot listen on {address}: {error}; is another server using it? Pick \
                     another with --listen (port 0 picks a free one)"
                );
            }
            (Err(error @ NodeError::Bind { .. }), Announce::WithName) => {
                anyhow::bail!("{error}; is another server using it?");
            }
            (Err(error), _) => return Err(error.into()),
        }
        let admin = match admin {
            Some(Admin { address, token }) => {
                let bound = tokio::net::TcpListener::bind(address).await;
                let bound = bound.with_context(|| {
                    format!("cannot listen on {address} for the admin listener")
                })?;
                Some((bound, token))
            }
            None => None,
        };
        let shutdown = shutdown_signal().context("cannot install the SIGINT/SIGTERM handlers")?;
        let handle = node.handle();
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let admin_address = match admin {
            Some((listener, token)) => {
                let address = listener.local_addr()?;
                let serving =
                    shoal_host::serve_admin(listener, handle.clone(), token, admin_stop.clone());
                tokio::spawn(async move {
                    if let Err(error) = serving.await {
                        tracing::error!("the admin listener failed: {error}");
                    }
                });
                Some(address)
            }
            None => None,
        };
        // Kept until the node stops: dropping it stops the watch.
        let mut watching = match watch {
            Watch(true) => Some(handle.watch()?),
            Watch(false) => None,
        };
        let hangups = reload_signal().context("cannot install the SIGHUP handler")?;
        let reloading = tokio::spawn(async move {
            let mut hangups = hangups;
            while hangups.recv().await.is_some() {
                let spec = match &reload {
                    Reload::Spec(respec) => respec(),
                    Reload::Settings(reconfigure) => {
                        let applied =
                            reconfigure().and_then(|config| Ok(handle.reconfigure(config)?));
                        if let Err(error) = applied {
                            tracing::error!("SIGHUP: {error:#}; nothing changed");
                        }
                        continue;
                    }
                };
                let spec = match spec {
                    Ok(spec) => spec,
                    Err(error) => {
                        tracing::error!("SIGHUP: {error:#}; nothing changed");
                        continue;
                    }
                };
                handle.reload(spec).await;
                // The plugin files may have changed with the config.
                if watching.is_some() {
                    watching = None;
                    match handle.watch() {
                        Ok(watch) => watching = Some(watch),
                        Err(error) => tracing::error!("{error}"),
                    }
                }
            }
        });
        // Tests and scripts wait for these lines to know the server is ready, and may close
        // the pipe once they have read what they wait for: the lines are written in one go,
        // and a write that fails does not stop the server.
        let mut ready = String::new();
        for listener in node.listeners() {
            let Some(local) = listener.local_addr() else {
                continue;
            };
            match announce {
                Announce::AddressOnly => ready.push_str(&format!("listening on {local}\n")),
                Announce::WithName => {
                    ready.push_str(&format!("listening on {local} ({})\n", listener.name()));
                }
            }
        }
        if let Some(address) = admin_address {
            ready.push_str(&format!("admin listening on {address}\n"));
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(error) = stdout
            .write_all(ready.as_bytes())
            .and_then(|()| stdout.flush())
        {
            tracing::warn!("cannot write the ready lines to stdout: {error}");
        }
        drop(stdout);
        let served = node.serve(shutdown).await;
        reloading.abort();
        admin_stop.cancel();
        served?;
        Ok(())
    })
}

/// SIGHUP, as a stream: a config reload each.
#[cfg(unix)]
fn reload_signal() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
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

fn check(path: &Path) -> anyhow::Result<()> {
    // An engine whose pool fits the plugin, as a node serving it would make.
    let spec = NodeSpec {
        listeners: vec![ListenerSpec {
            address: "127.0.0.1:0".parse()?,
            plugin: PluginSource::File(path.to_path_buf()),
            config: ServerConfig::default(),
        }],
        ..NodeSpec::default()
    };
    let config = RuntimeConfig::builder()
        .max_instances(1)
        .core_instances_per_component(spec.core_instances_needed())
        .build()?;
    let runtime = Runtime::new(config).context("cannot start the Wasm engine")?;
    let plugin = Plugin::from_file(&runtime, path)?;
    let world = plugin.world_version().as_str();
    let handoff = if plugin.exports_handoff() {
        " and handoff: its connections can move to a newer version"
    } else {
        ""
    };
    println!(
        "ok: {} implements the shoal:plugin@{world} world (exports its handler{handoff})",
        plugin.name()
    );
    let load = plugin.load_report();
    let image = load.image_bytes.div_ceil(1024);
    match load.memory_init {
        MemoryInit::Copy => println!("memory: {image} KiB of data, copied into each instance"),
        MemoryInit::CopyOnWrite => {
            println!("memory: a {image} KiB image, mapped copy-on-write into each instance");
        }
    }
    Ok(())
}
