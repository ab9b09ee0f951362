//! The node: the Wasm engine and every listener of one process ([`Node`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::listener::ServerConfig;
use crate::config::spec::{NodeSpec, PluginSource};
use crate::config::units::size;
use crate::error::{NodeError, PluginError, ServeError};
use crate::handler::HandlerFactory;
use crate::messages::local::Mailboxes;
use crate::node_handle::{HandleListener, NodeHandle, ServeErased, Start};
use crate::observe::stats::Stats;
use crate::server::listener::{Server, Wanted, pool_shortfall};
use crate::versions::{VersionInfo, Versions};
use crate::wasm::plugin::{Plugin, read_plugin_file};
use crate::wasm::runtime::{Runtime, RuntimeConfig};
use crate::wasm::shape;

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
    /// What handles see and change of the listeners while the node serves.
    shared: Arc<Mutex<Vec<HandleListener>>>,
    /// Listeners added while serving (by a reload), for `serve` to start.
    starts: (
        mpsc::UnboundedSender<Start>,
        Option<mpsc::UnboundedReceiver<Start>>,
    ),
    /// Cancelled when the node stops; each listener's token is a child of it.
    stop: CancellationToken,
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
    /// Cancelled to stop this listener alone (a reload removed it); a child of the node's.
    stop: CancellationToken,
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

impl Node {
    /// An empty node whose Wasm engine (started when the first plugin is loaded) has
    /// `runtime_config`. Listeners are added with [`Node::add`].
    #[must_use]
    pub fn new(runtime_config: RuntimeConfig) -> Self {
        let (started, starts) = mpsc::unbounded_channel();
        Self {
            runtime_config,
            runtime: None,
            listeners: Vec::new(),
            checked: false,
            shared: Arc::default(),
            starts: (started, Some(starts)),
            stop: CancellationToken::new(),
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
        // Sized for the connections awake at once: all of them, unless a listener lets some
        // hibernate (`max_instances` below `max_connections`).
        let instances = Self::pool_size(spec.listeners.iter().map(|l| l.config.max_instances()));
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
        if let Some(count) = spec.copy_on_write_instances {
            runtime_config = runtime_config.copy_on_write_instances(count);
        }
        let runtime_config = runtime_config
            .max_instances(instances)
            .max_memory_bytes(memory)
            .core_instances_per_component(spec.core_instances_needed())
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
                (listener.plugin, node.shared_listeners().last_mut())
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
        let stop = self.stop.child_token();
        self.shared_listeners().push(HandleListener {
            address,
            config: server.config().clone(),
            settings: server.settings(),
            stats: server.stats(),
            mailboxes: server.mailboxes(),
            versions: None,
            plugin_file: None,
            stop: stop.clone(),
            local: std::sync::OnceLock::new(),
        });
        self.listeners.push(NodeListener {
            address,
            config: server.config().clone(),
            stats: server.stats(),
            mailboxes: server.mailboxes(),
            capacity: server.capacity(),
            server: Box::new(server.without_pool_check()),
            bound: None,
            versions: None,
            stop,
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
        if let Some(listener) = self.shared_listeners().last_mut() {
            listener.versions = Some(versions.clone());
        }
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

    /// A handle to swap plugins, reload the config and read versions while the node serves.
    /// Take it once the listeners are added: they share it.
    #[must_use]
    pub fn handle(&self) -> NodeHandle {
        NodeHandle {
            runtime: self.runtime.clone(),
            listeners: Arc::clone(&self.shared),
            starts: self.starts.0.clone(),
            stop: self.stop.clone(),
        }
    }

    fn shared_listeners(&self) -> MutexGuard<'_, Vec<HandleListener>> {
        // Each critical section is a lookup or one vector operation.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
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
                Ok(bound) => {
                    if let (Ok(local), Some(shared)) = (bound.local_addr(), self.shared.lock().ok())
                        && let Some(entry) = shared
                            .iter()
                            .find(|l| l.config.name() == listener.config.name())
                    {
                        let _ = entry.local.set(local);
                    }
                    listener.bound = Some(bound);
                }
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
        let mut starts = self.starts.1.take();
        let mut running = JoinSet::new();
        for listener in self.listeners {
            let Some(bound) = listener.bound else {
                continue;
            };
            let name = listener.config.name().to_string();
            let serving = listener.server.serve(bound, listener.stop);
            running.spawn(async move { (name, serving.await) });
        }
        let mut first_error = None;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(start) = async { starts.as_mut()?.recv().await } => {
                    let Start { name, server, bound, stop } = start;
                    let serving = server.serve(bound, stop);
                    running.spawn(async move { (name, serving.await) });
                }
                Some(ended) = running.join_next(), if !running.is_empty() => {
                    // A listener removed by a reload ends here, having drained.
                    record_end(ended, &mut first_error);
                }
            }
        }
        self.stop.cancel();
        while let Some(ended) = running.join_next().await {
            record_end(ended, &mut first_error);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The instance pool for listeners that may each have so many instances alive
    /// ([`ServerConfig::max_instances`]): their sum, capped at
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
        let wasm: Vec<Wanted<'_>> = self
            .listeners
            .iter()
            .filter(|l| l.capacity.is_some())
            .map(|l| Wanted::of(&l.config))
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

impl NodeSpec {
    /// Core instances per component an engine serving this spec must allow: what its
    /// plugins create (read from their files with the checks of a load — a FIFO is never
    /// opened, a file past `max_plugin_size` never read; one that cannot be read is left for
    /// its load to report), its own
    /// [`core_instances_per_component`](Self::core_instances_per_component), and the
    /// runtime's default, whichever is largest.
    #[must_use]
    pub fn core_instances_needed(&self) -> u32 {
        let max = self
            .max_plugin_size
            .unwrap_or_else(|| RuntimeConfig::default().max_plugin_bytes());
        let plugins = self
            .listeners
            .iter()
            .filter_map(|listener| match &listener.plugin {
                PluginSource::File(path) => read_plugin_file(path, max)
                    .ok()
                    .and_then(|bytes| shape::core_instances(&bytes).ok()),
                PluginSource::Bytes { bytes, .. } => shape::core_instances(bytes).ok(),
            });
        plugins.chain(self.core_instances_per_component).fold(
            RuntimeConfig::default().core_instances_per_component(),
            u32::max,
        )
    }
}

/// Each instance of the pools reserves two memory slots (guests built through the WASI
/// adapter have two memories), each the largest `memory_limit` plus a 64 KiB guard — the
/// pool of the engine that copies memories and the smaller one of the copy-on-write engine:
/// refuse a spec whose pools cannot be reserved, naming the listener that asks the most.
fn check_reservation(spec: &NodeSpec, instances: u32) -> Result<(), NodeError> {
    let mut pools = RuntimeConfig::builder().max_instances(instances);
    if let Some(count) = spec.copy_on_write_instances {
        pools = pools.copy_on_write_instances(count);
    }
    let copy_on_write = pools
        .build()
        .map_or(0, |config| config.copy_on_write_instances());
    let Some(largest) = spec
        .listeners
        .iter()
        .max_by_key(|l| l.config.memory_limit())
    else {
        return Ok(());
    };
    let slot = largest.config.memory_limit() as u128 + (64 << 10);
    let needed = (u128::from(instances) + u128::from(copy_on_write)) * 2 * slot;
    if needed <= POOL_ADDRESS_SPACE {
        return Ok(());
    }
    let tib = |bytes: u128| bytes as f64 / (1u128 << 40) as f64;
    Err(NodeError::Unfit {
        listener: largest.config.name().to_string(),
        reason: format!(
            "memory_limit ({}) × {} pool instances × 2 memories needs {:.0}TiB of \
             address space to reserve, more than the {:.0}TiB a process may use: lower \
             memory_limit or max_connections",
            size(&largest.config.memory_limit()),
            u64::from(instances) + u64::from(copy_on_write),
            tib(needed),
            tib(POOL_ADDRESS_SPACE),
        ),
    })
}

/// A listener's serving task ended: log an error, keeping the first for `serve` to return.
fn record_end(
    ended: Result<(String, Result<(), ServeError>), tokio::task::JoinError>,
    first_error: &mut Option<NodeError>,
) {
    match ended {
        Ok((_, Ok(()))) => {}
        Ok((listener, Err(error))) => {
            tracing::error!(listener, "listener stopped: {error}");
            first_error.get_or_insert(NodeError::Serve { listener, error });
        }
        Err(join) => tracing::error!("a listener's task failed: {join}"),
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
