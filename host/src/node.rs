//! The node: the Wasm engine and every listener of one process ([`Node`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::listener::ServerConfig;
use crate::config::spec::{NodeSpec, PluginSource};
use crate::config::units::size;
use crate::error::{NodeError, PluginError, ServeError};
use crate::handler::HandlerFactory;
use crate::messages::local::Mailboxes;
use crate::observe::stats::Stats;
use crate::server::listener::{Server, pool_shortfall};
use crate::versions::{VersionInfo, Versions};
use crate::wasm::plugin::Plugin;
use crate::wasm::runtime::{Runtime, RuntimeConfig};
use crate::watch::{self, PluginWatch};

/// The Wasm engine and every listener of one process. It sizes the instance pool,
/// loads each plugin (through the compile cache), binds every address, serves, and stops
/// every listener on one shutdown future.
///
/// ```no_run
/// use shoal_host::{Node, NodeSpec};
///
/// # async fn run() -> anyhow::Result<()> {
/// let spec = NodeSpec::load("shoal.toml")?;
/// let mut node = Node::from_spec(spec)?;
/// node.bind().await?;
/// for listener in node.listeners() {
///     println!("{} listens on {:?}", listener.name(), listener.local_addr());
/// }
/// node.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Sizing the instance pool
///
/// Every open connection of a Wasm listener holds one instance of the pool, so a node built
/// from a spec sizes the pool to the sum of its listeners' `max_connections`, capped at
/// [`RuntimeConfig::DEFAULT_MAX_INSTANCES`] (16,384: past it the kernel's limit on memory
/// mappings, `vm.max_map_count`, is reached). The rule is the same whether the listeners come
/// from a config file or from `shoal serve --max-connections N`. When the listeners allow
/// more connections than the pool holds, the node says so at start, naming them; a
/// connection that finds the pool full is then closed at once (counted as
/// [`EndKind::NoInstance`](crate::EndKind::NoInstance)).
pub struct Node {
    runtime_config: RuntimeConfig,
    /// Started when the first plugin is loaded: a node of native listeners runs no engine.
    runtime: Option<Runtime>,
    listeners: Vec<NodeListener>,
    /// Whether [`Node::check`] passed (at the first bind).
    checked: bool,
}

/// One listener of a [`Node`]: its name, settings and counters.
pub struct NodeListener {
    address: SocketAddr,
    config: ServerConfig,
    stats: Arc<Stats>,
    mailboxes: Mailboxes,
    /// How many instances its factory can have alive at once, if bounded (a Wasm plugin).
    capacity: Option<usize>,
    server: Box<dyn ServeErased>,
    bound: Option<TcpListener>,
    /// Its plugin's versions, when it serves a plugin that can be swapped.
    versions: Option<Versions>,
    /// The file its plugin was loaded from, if any: watched by [`NodeHandle::watch`].
    plugin_file: Option<PathBuf>,
}

impl NodeListener {
    /// The listener's name (unique in its node).
    #[must_use]
    pub fn name(&self) -> &str {
        self.config.name()
    }

    /// The address it was asked to listen on.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address it listens on, once [`Node::bind`] has bound it (port 0 resolved).
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.bound
            .as_ref()
            .and_then(|bound| bound.local_addr().ok())
    }

    /// Its settings.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Its live counters, readable while the node serves and after it stopped.
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The registry of its connections, to message them from native code.
    #[must_use]
    pub fn mailboxes(&self) -> Mailboxes {
        self.mailboxes.clone()
    }

    /// Its plugin's versions, when it serves a plugin ([`Node::add_plugin`]).
    #[must_use]
    pub fn versions(&self) -> Option<&Versions> {
        self.versions.as_ref()
    }
}

/// Swaps plugins and reads versions while a [`Node`] serves ([`Node::handle`]). Cloning it
/// is cheap.
#[derive(Clone)]
pub struct NodeHandle {
    runtime: Option<Runtime>,
    /// Each listener's settings, versions and plugin file, in the node's order.
    listeners: Arc<Vec<HandleListener>>,
}

struct HandleListener {
    config: ServerConfig,
    versions: Option<Versions>,
    plugin_file: Option<PathBuf>,
}

impl NodeHandle {
    /// See [`Node::swap`]. A refusal is logged too.
    ///
    /// # Errors
    ///
    /// As [`Node::swap`].
    pub async fn swap(&self, listener: &str, plugin: Plugin) -> Result<VersionInfo, NodeError> {
        let name = plugin.name().to_string();
        let swapped = self.swap_plugin(listener, plugin).await;
        if let Err(error) = &swapped {
            tracing::warn!(listener, plugin = name, "{error}");
        }
        swapped
    }

    /// Load the plugin file at `path` on the node's engine (through its compile cache, on a
    /// blocking thread: accepting never waits on a compile) and make it listener
    /// `listener`'s current version, as [`Node::swap`]. A refusal is logged with the file.
    ///
    /// # Errors
    ///
    /// As [`Node::swap`], and [`NodeError::Plugin`] when the file cannot be loaded.
    pub async fn swap_file(
        &self,
        listener: &str,
        path: impl Into<std::path::PathBuf>,
    ) -> Result<VersionInfo, NodeError> {
        let path = path.into();
        let swapped = self.load_and_swap(listener, path.clone()).await;
        if let Err(error) = &swapped {
            tracing::warn!(listener, file = %path.display(), "{error}");
        }
        swapped
    }

    async fn load_and_swap(&self, listener: &str, path: PathBuf) -> Result<VersionInfo, NodeError> {
        let plugin = self.load(listener, path).await?;
        self.swap_plugin(listener, plugin).await
    }

    /// Load the plugin file at `path` for `listener` on a blocking thread.
    async fn load(&self, listener: &str, path: PathBuf) -> Result<Plugin, NodeError> {
        self.find(listener)?;
        let runtime = self
            .runtime
            .clone()
            .ok_or_else(|| NodeError::NotSwappable(listener.to_string()))?;
        let plugin_error = |error| NodeError::Plugin {
            listener: listener.to_string(),
            error,
        };
        let shown = path.display().to_string();
        let loaded = tokio::task::spawn_blocking(move || Plugin::from_file(&runtime, path))
            .await
            .map_err(|join| {
                plugin_error(PluginError::Compile {
                    name: listener.to_string(),
                    message: format!("the loading thread stopped: {join}"),
                })
            })?;
        let plugin = loaded.map_err(plugin_error)?;
        tracing::info!(
            listener,
            plugin = plugin.name(),
            hash = %plugin.content_hash(),
            "{}",
            plugin.load_report().describe(&shown)
        );
        Ok(plugin)
    }

    async fn swap_plugin(&self, listener: &str, plugin: Plugin) -> Result<VersionInfo, NodeError> {
        let (config, versions) = self.find(listener)?;
        versions
            .swap(plugin, config)
            .await
            .map_err(|error| NodeError::Swap {
                listener: listener.to_string(),
                error,
            })
    }

    /// Listener `listener`'s versions: the current one and the older ones still serving.
    #[must_use]
    pub fn versions(&self, listener: &str) -> Option<Vec<VersionInfo>> {
        self.find(listener)
            .ok()
            .map(|(_, versions)| versions.list())
    }

    fn find(&self, listener: &str) -> Result<(&ServerConfig, &Versions), NodeError> {
        let found = self
            .listeners
            .iter()
            .find(|l| l.config.name() == listener)
            .ok_or_else(|| NodeError::NoSuchListener(listener.to_string()))?;
        let versions = found
            .versions
            .as_ref()
            .ok_or_else(|| NodeError::NotSwappable(listener.to_string()))?;
        Ok((&found.config, versions))
    }

    /// Watch the plugin file of every listener whose plugin came from a file: when one is
    /// rewritten or replaced by a rename and has settled ([`SETTLE`](crate::watch::SETTLE)),
    /// it is loaded and swapped in as [`NodeHandle::swap_file`] does — unless its content is
    /// that of the current version already. Failures are logged; the current version stays.
    /// Watching stops when the returned value is dropped.
    ///
    /// # Errors
    ///
    /// [`NodeError::Watch`] when the OS refuses a watch.
    pub fn watch(&self) -> Result<PluginWatch, NodeError> {
        let files: Vec<(String, PathBuf)> = self
            .listeners
            .iter()
            .filter(|l| l.versions.is_some())
            .filter_map(|l| Some((l.config.name().to_string(), l.plugin_file.clone()?)))
            .collect();
        let handle = self.clone();
        watch::watch(files, move |listener, path| {
            let handle = handle.clone();
            async move {
                handle.swap_file_if_changed(&listener, path).await;
            }
        })
        .map_err(|error| NodeError::Watch(error.to_string()))
    }

    /// [`NodeHandle::swap_file`], unless the file holds the current version's content (it was
    /// touched, or written back unchanged).
    async fn swap_file_if_changed(&self, listener: &str, path: PathBuf) {
        let loaded = match self.load(listener, path.clone()).await {
            Ok(plugin) => plugin,
            Err(error) => {
                tracing::warn!(listener, file = %path.display(), "{error}");
                return;
            }
        };
        let unchanged = self
            .find(listener)
            .is_ok_and(|(_, versions)| versions.current().hash == *loaded.content_hash());
        if unchanged {
            tracing::debug!(listener, file = %path.display(), "plugin file unchanged");
            return;
        }
        if let Err(error) = self.swap_plugin(listener, loaded).await {
            tracing::warn!(listener, file = %path.display(), "{error}");
        }
    }
}

impl Node {
    /// An empty node whose Wasm engine (started when the first plugin is loaded) has
    /// `runtime_config`. Listeners are added with [`Node::add`].
    #[must_use]
    pub fn new(runtime_config: RuntimeConfig) -> Self {
        Self {
            runtime_config,
            runtime: None,
            listeners: Vec::new(),
            checked: false,
        }
    }

    /// A node with every listener of `spec`: the instance pool sized by the rule in the
    /// [type docs](Node#sizing-the-instance-pool), every plugin loaded (from the compile cache when it has it; each
    /// load is logged), every listener added. Nothing is bound yet.
    ///
    /// # Errors
    ///
    /// [`NodeError`] naming the listener whose plugin cannot be loaded, or whose name is
    /// taken; or the engine cannot start.
    pub fn from_spec(spec: NodeSpec) -> Result<Self, NodeError> {
        let instances = Self::pool_size(spec.listeners.iter().map(|l| l.config.max_connections()));
        check_reservation(&spec, instances)?;
        // The pool's memory slots fit the largest limit, and never less than the default: a
        // plugin must compile for the pool even when a listener's limit is too small for it,
        // so that the check at bind can say what it needs (each store enforces its own
        // listener's limit).
        let memory = spec
            .listeners
            .iter()
            .map(|l| l.config.memory_limit())
            .max()
            .unwrap_or(0)
            .max(RuntimeConfig::default().max_memory_bytes());
        let mut runtime_config = RuntimeConfig::builder();
        if let Some(max) = spec.max_plugin_size {
            runtime_config = runtime_config.max_plugin_bytes(max);
        }
        let runtime_config = runtime_config
            .max_instances(instances)
            .max_memory_bytes(memory)
            .cache_dir(spec.cache_dir)
            .cpu_shares(spec.cpu_shares)
            .build()
            .map_err(NodeError::RuntimeConfig)?;
        let mut node = Self::new(runtime_config);
        for listener in spec.listeners {
            let name = listener.config.name().to_string();
            let plugin = node
                .load_plugin(&listener.plugin)
                .map_err(|error| match error {
                    NodeError::Plugin { error, .. } => NodeError::Plugin {
                        listener: name.clone(),
                        error,
                    },
                    other => other,
                })?;
            node.add_plugin(listener.address, plugin, listener.config)?;
            if let (PluginSource::File(path), Some(added)) =
                (listener.plugin, node.listeners.last_mut())
            {
                added.plugin_file = Some(path);
            }
        }
        Ok(node)
    }

    /// The node's Wasm engine, started now if no plugin has been loaded yet.
    ///
    /// # Errors
    ///
    /// [`NodeError::Runtime`] when the engine cannot start.
    pub fn runtime(&mut self) -> Result<&Runtime, NodeError> {
        let runtime = match self.runtime.take() {
            Some(runtime) => runtime,
            None => Runtime::new(self.runtime_config.clone()).map_err(NodeError::Runtime)?,
        };
        Ok(self.runtime.insert(runtime))
    }

    /// Load a plugin on the node's engine (through its compile cache), and log how: `compiled
    /// echo.wasm (24 KiB) in 38 ms` or `loaded echo.wasm (24 KiB) from cache in 2 ms`.
    ///
    /// # Errors
    ///
    /// [`NodeError::Plugin`] (its `listener` empty) when the plugin cannot be loaded;
    /// [`NodeError::Runtime`] when the engine cannot start.
    pub fn load_plugin(&mut self, source: &PluginSource) -> Result<Plugin, NodeError> {
        let runtime = self.runtime()?;
        let plugin = match source {
            PluginSource::File(path) => Plugin::from_file(runtime, path),
            PluginSource::Bytes { name, bytes } => Plugin::from_bytes(runtime, name, bytes),
        };
        let plugin = plugin.map_err(|error: PluginError| NodeError::Plugin {
            listener: String::new(),
            error,
        })?;
        tracing::info!(
            plugin = plugin.name(),
            hash = %plugin.content_hash(),
            "{}",
            plugin.load_report().describe(&source.display_name())
        );
        Ok(plugin)
    }

    /// Add a listener that will serve `server` on `address`.
    ///
    /// # Errors
    ///
    /// [`NodeError::DuplicateName`] when a listener of this node has the same name.
    pub fn add<F: HandlerFactory>(
        &mut self,
        address: SocketAddr,
        server: Server<F>,
    ) -> Result<(), NodeError> {
        let name = server.config().name();
        if self.listener(name).is_some() {
            return Err(NodeError::DuplicateName(name.to_string()));
        }
        self.checked = false;
        self.listeners.push(NodeListener {
            address,
            config: server.config().clone(),
            stats: server.stats(),
            mailboxes: server.mailboxes(),
            capacity: server.capacity(),
            server: Box::new(server.without_pool_check()),
            bound: None,
            versions: None,
            plugin_file: None,
        });
        Ok(())
    }

    /// Add a listener that will serve `plugin` on `address` with `config`, and whose plugin
    /// can be replaced while it serves ([`Node::swap`]).
    ///
    /// # Errors
    ///
    /// [`NodeError::DuplicateName`] when a listener of this node has the same name.
    pub fn add_plugin(
        &mut self,
        address: SocketAddr,
        plugin: Plugin,
        config: ServerConfig,
    ) -> Result<(), NodeError> {
        let versions = Versions::new(plugin);
        self.add(address, Server::new(versions.clone(), config))?;
        if let Some(listener) = self.listeners.last_mut() {
            listener.versions = Some(versions);
        }
        Ok(())
    }

    /// Make `plugin` the current version of listener `listener`: new connections get it,
    /// open ones stay on theirs (see [`Versions::swap`] for the checks it passes first).
    /// While the node serves, swap through a [`Node::handle`].
    ///
    /// # Errors
    ///
    /// [`NodeError::NoSuchListener`], [`NodeError::NotSwappable`] for a listener added with
    /// [`Node::add`], or [`NodeError::Swap`] saying why the plugin was refused (the current
    /// version stays).
    pub async fn swap(&self, listener: &str, plugin: Plugin) -> Result<VersionInfo, NodeError> {
        self.handle().swap(listener, plugin).await
    }

    /// A handle to swap plugins and read versions while the node serves.
    #[must_use]
    pub fn handle(&self) -> NodeHandle {
        NodeHandle {
            runtime: self.runtime.clone(),
            listeners: Arc::new(
                self.listeners
                    .iter()
                    .map(|l| HandleListener {
                        config: l.config.clone(),
                        versions: l.versions.clone(),
                        plugin_file: l.plugin_file.clone(),
                    })
                    .collect(),
            ),
        }
    }

    /// The listener named `name`.
    #[must_use]
    pub fn listener(&self, name: &str) -> Option<&NodeListener> {
        self.listeners.iter().find(|l| l.name() == name)
    }

    /// Every listener, in the order they were added.
    #[must_use]
    pub fn listeners(&self) -> &[NodeListener] {
        &self.listeners
    }

    /// Bind every listener's address, in order. If one cannot be bound, the ones bound before
    /// are closed again: nothing is left listening.
    ///
    /// # Errors
    ///
    /// [`NodeError::Bind`] naming the listener and its address.
    pub async fn bind(&mut self) -> Result<(), NodeError> {
        if !self.checked {
            self.check().await?;
            self.checked = true;
        }
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            if listener.bound.is_some() {
                continue;
            }
            match TcpListener::bind(listener.address).await {
                Ok(bound) => listener.bound = Some(bound),
                Err(error) => {
                    let failed = NodeError::Bind {
                        listener: listener.name().to_string(),
                        address: listener.address,
                        error,
                    };
                    for listener in &mut self.listeners {
                        listener.bound = None;
                    }
                    return Err(failed);
                }
            }
        }
        Ok(())
    }

    /// Check that every listener's settings can work with its handler (a plugin starts under
    /// its `memory_limit`, say), before anything is bound; warn about settings that will
    /// refuse output a guest is likely to send. [`Node::bind`] runs it.
    ///
    /// # Errors
    ///
    /// [`NodeError::Unfit`] naming the listener, the setting and what its plugin needs.
    pub async fn check(&self) -> Result<(), NodeError> {
        for listener in &self.listeners {
            let config = &listener.config;
            if let Err(reason) = listener.server.check().await {
                return Err(NodeError::Unfit {
                    listener: listener.name().to_string(),
                    reason,
                });
            }
            if config.output_buffer_limit() < config.read_buffer_size() {
                tracing::warn!(
                    listener = listener.name(),
                    "output_buffer_limit ({}) is smaller than read_buffer_size ({}): a guest \
                     that sends back what it reads will have its send refused",
                    size(&config.output_buffer_limit()),
                    size(&config.read_buffer_size())
                );
            }
        }
        Ok(())
    }

    /// Serve every listener (binding those not bound yet) until `shutdown` resolves; then
    /// every listener stops accepting, gives its guests `close(shutdown)` and drains within
    /// its own `shutdown_timeout`. Returns once all have stopped.
    ///
    /// # Errors
    ///
    /// [`NodeError::Bind`] as [`Node::bind`]; [`NodeError::Serve`] for the first listener
    /// that stopped with an error (the others are logged).
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        self.bind().await?;
        self.warn_if_pool_too_small();
        let stop = CancellationToken::new();
        let mut running = JoinSet::new();
        for listener in self.listeners {
            let Some(bound) = listener.bound else {
                continue;
            };
            let name = listener.config.name().to_string();
            let serving = listener.server.serve(bound, stop.clone());
            running.spawn(async move { (name, serving.await) });
        }
        shutdown.await;
        stop.cancel();
        let mut first_error = None;
        while let Some(ended) = running.join_next().await {
            match ended {
                Ok((_, Ok(()))) => {}
                Ok((listener, Err(error))) => {
                    tracing::error!(listener, "listener stopped: {error}");
                    first_error.get_or_insert(NodeError::Serve { listener, error });
                }
                Err(join) => tracing::error!("a listener's task failed: {join}"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The instance pool for listeners that allow `max_connections` each: their sum, capped at
    /// [`RuntimeConfig::DEFAULT_MAX_INSTANCES`], at least 1.
    #[must_use]
    pub fn pool_size(max_connections: impl IntoIterator<Item = usize>) -> u32 {
        let wanted: usize = max_connections.into_iter().fold(0, usize::saturating_add);
        let cap = RuntimeConfig::DEFAULT_MAX_INSTANCES;
        u32::try_from(wanted).map_or(cap, |wanted| wanted.clamp(1, cap))
    }

    fn warn_if_pool_too_small(&self) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let wasm: Vec<(&str, usize)> = self
            .listeners
            .iter()
            .filter(|l| l.capacity.is_some())
            .map(|l| (l.name(), l.config.max_connections()))
            .collect();
        let capacity = usize::try_from(runtime.config().max_instances()).unwrap_or(usize::MAX);
        if let Some(warning) = pool_shortfall(&wasm, capacity) {
            tracing::warn!("{warning}");
        }
    }
}

/// The address space a process may reserve for its instance pool's linear memories: half of
/// x86-64's 128 TiB of user address space, leaving room for everything else.
const POOL_ADDRESS_SPACE: u128 = 64 << 40;

/// Each instance of the pool reserves two memory slots (guests built through the WASI
/// adapter have two memories), each the largest `memory_limit` plus a 64 KiB guard: refuse a
/// spec whose pool cannot be reserved, naming the listener that asks the most.
fn check_reservation(spec: &NodeSpec, instances: u32) -> Result<(), NodeError> {
    let Some(largest) = spec
        .listeners
        .iter()
        .max_by_key(|l| l.config.memory_limit())
    else {
        return Ok(());
    };
    let slot = largest.config.memory_limit() as u128 + (64 << 10);
    let needed = u128::from(instances) * 2 * slot;
    if needed <= POOL_ADDRESS_SPACE {
        return Ok(());
    }
    let tib = |bytes: u128| bytes as f64 / (1u128 << 40) as f64;
    Err(NodeError::Unfit {
        listener: largest.config.name().to_string(),
        reason: format!(
            "memory_limit ({}) × {instances} pool instances × 2 memories needs {:.0}TiB of \
             address space to reserve, more than the {:.0}TiB a process may use: lower \
             memory_limit or max_connections",
            size(&largest.config.memory_limit()),
            tib(needed),
            tib(POOL_ADDRESS_SPACE),
        ),
    })
}

/// A [`Server`] of any handler factory, served through a trait object so that one node holds
/// listeners of different factories (plugins and native code).
trait ServeErased: Send + Sync {
    /// Whether the listener's handlers can be made under its settings.
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    fn serve(
        self: Box<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>;
}

impl<F: HandlerFactory> ServeErased for Server<F> {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.check())
    }

    fn serve(
        self: Box<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>> {
        Box::pin(Server::serve(*self, listener, stop.cancelled_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_holds_every_listener_up_to_the_cap() {
        assert_eq!(Node::pool_size([100, 50]), 150);
        assert_eq!(Node::pool_size([16_384, 1_000]), 16_384);
        assert_eq!(Node::pool_size([usize::MAX, usize::MAX]), 16_384);
        assert_eq!(Node::pool_size([]), 1);
    }

    #[tokio::test]
    async fn a_native_node_starts_no_engine_and_names_a_taken_address() -> anyhow::Result<()> {
        let taken = TcpListener::bind("127.0.0.1:0").await?;
        let taken_addr = taken.local_addr()?;
        let mut node = Node::new(RuntimeConfig::default());
        let first = ServerConfig::builder().name("first").build()?;
        let second = ServerConfig::builder().name("second").build()?;
        node.add(
            "127.0.0.1:0".parse()?,
            Server::new(crate::native::Echo, first),
        )?;
        node.add(taken_addr, Server::new(crate::native::Echo, second))?;
        let Err(NodeError::Bind { listener, .. }) = node.bind().await else {
            panic!("the taken address must fail");
        };
        assert_eq!(listener, "second");
        assert!(node.listeners().iter().all(|l| l.local_addr().is_none()));
        assert!(node.runtime.is_none(), "no plugin, no engine");
        Ok(())
    }

    #[test]
    fn names_are_unique_in_a_node() -> anyhow::Result<()> {
        let mut node = Node::new(RuntimeConfig::default());
        let config = ServerConfig::builder().name("echo").build()?;
        node.add(
            "127.0.0.1:0".parse()?,
            Server::new(crate::native::Echo, config.clone()),
        )?;
        let again = node.add(
            "127.0.0.1:0".parse()?,
            Server::new(crate::native::Echo, config),
        );
        assert!(matches!(again, Err(NodeError::DuplicateName(name)) if name == "echo"));
        Ok(())
    }
}
