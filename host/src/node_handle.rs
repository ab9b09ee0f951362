//! What can change while a [`Node`](crate::Node) serves, through a [`NodeHandle`]: a
//! listener's plugin (swapped, from Rust or when its file changes), and the whole set of
//! listeners (a reloaded config: settings for new connections, listeners added and removed).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::listener::ServerConfig;
use crate::config::spec::{NodeSpec, PluginSource};
use crate::error::{NodeError, PluginError, ServeError};
use crate::handler::HandlerFactory;
use crate::messages::local::Mailboxes;
use crate::messages::types::MailboxCounts;
use crate::observe::stats::Stats;
use crate::server::listener::Server;
use crate::versions::{VersionInfo, Versions};
use crate::wasm::plugin::Plugin;
use crate::wasm::runtime::Runtime;
use crate::watch::{self, PluginWatch};

/// Swaps plugins and reads versions while a [`Node`](crate::Node) serves ([`Node::handle`](crate::Node::handle)). Cloning it
/// is cheap.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) runtime: Option<Runtime>,
    /// Each listener's settings, versions and plugin file, in the node's order.
    pub(crate) listeners: Arc<Mutex<Vec<HandleListener>>>,
    /// New listeners, for the node's serving loop to start.
    pub(crate) starts: mpsc::UnboundedSender<Start>,
    /// Cancelled when the node stops; each listener's own token is a child of it.
    pub(crate) stop: CancellationToken,
}

/// What a handle knows of one listener.
pub(crate) struct HandleListener {
    pub(crate) address: std::net::SocketAddr,
    pub(crate) config: ServerConfig,
    /// The settings its new connections start with.
    pub(crate) settings: Arc<ArcSwap<ServerConfig>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) versions: Option<Versions>,
    pub(crate) plugin_file: Option<PathBuf>,
    /// Cancelled to stop this listener alone (it was removed from the config).
    pub(crate) stop: CancellationToken,
    /// Where it listens, once bound.
    pub(crate) local: std::sync::OnceLock<std::net::SocketAddr>,
}

/// A listener added while the node serves: bound, checked, ready to serve.
pub(crate) struct Start {
    pub(crate) name: String,
    pub(crate) server: Box<dyn ServeErased>,
    pub(crate) bound: TcpListener,
    pub(crate) stop: CancellationToken,
}

/// One listener of a serving node, as [`NodeHandle::listener_status`] sees it now.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerStatus {
    /// Its name.
    pub name: String,
    /// Where it listens (the bound address, once bound).
    pub address: std::net::SocketAddr,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// What its mailboxes have counted.
    pub mailboxes: MailboxCounts,
    /// Its plugin versions, the current one and those still serving (none for a listener
    /// of native code).
    pub versions: Vec<VersionInfo>,
    /// The settings its new connections get.
    pub config: Arc<ServerConfig>,
}

impl NodeHandle {
    /// See [`Node::swap`](crate::Node::swap). A refusal is logged too.
    ///
    /// # Errors
    ///
    /// As [`Node::swap`](crate::Node::swap).
    pub async fn swap(&self, listener: &str, plugin: Plugin) -> Result<VersionInfo, NodeError> {
        let name = plugin.name().to_string();
        let swapped = self.swap_plugin(listener, plugin).await;
        if let Err(error) = &swapped {
            tracing::warn!(listener, plugin = name, "{error}");
        }
        swapped
    }

    /// Load a plugin from `bytes` (an upload: `shoal deploy`), named `name` in logs, on the
    /// node's engine, and make it listener `listener`'s current version exactly as a file
    /// change does: checked, probed, then current for new connections. Nothing is written to
    /// disk. A refusal is logged too.
    ///
    /// # Errors
    ///
    /// As [`NodeHandle::swap_file`].
    pub async fn deploy(
        &self,
        listener: &str,
        name: &str,
        bytes: bytes::Bytes,
    ) -> Result<VersionInfo, NodeError> {
        let deployed = async {
            self.find(listener)?;
            let source = PluginSource::Bytes {
                name: name.to_string(),
                bytes,
            };
            let plugin = self.load(listener, source).await?;
            self.swap_plugin(listener, plugin).await
        }
        .await;
        if let Err(error) = &deployed {
            tracing::warn!(listener, plugin = name, "deploy refused: {error}");
        }
        deployed
    }

    /// Make listener `listener`'s previous version current again (see
    /// [`Versions::rollback`]).
    ///
    /// # Errors
    ///
    /// [`NodeError::NoSuchListener`], [`NodeError::NotSwappable`], or
    /// [`NodeError::Swap`] with [`SwapError::NothingToRollBackTo`](crate::SwapError).
    pub async fn rollback(&self, listener: &str) -> Result<VersionInfo, NodeError> {
        let (_, versions) = self.find(listener)?;
        versions
            .rollback(listener)
            .await
            .map_err(|error| NodeError::Swap {
                listener: listener.to_string(),
                error,
            })
    }

    /// Load the plugin file at `path` on the node's engine (through its compile cache, on a
    /// blocking thread: accepting never waits on a compile) and make it listener
    /// `listener`'s current version, as [`Node::swap`](crate::Node::swap). A refusal is logged with the file.
    ///
    /// # Errors
    ///
    /// As [`Node::swap`](crate::Node::swap), and [`NodeError::Plugin`] when the file cannot be loaded.
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
        self.find(listener)?;
        let plugin = self.load(listener, PluginSource::File(path)).await?;
        self.swap_plugin(listener, plugin).await
    }

    /// Load `listener`'s plugin from `source` on the node's engine, on a blocking thread (a
    /// compile never holds up the runtime), and log how it was loaded.
    async fn load(&self, listener: &str, source: PluginSource) -> Result<Plugin, NodeError> {
        let runtime = self
            .runtime
            .clone()
            .ok_or_else(|| NodeError::NotSwappable(listener.to_string()))?;
        let plugin_error = |error| NodeError::Plugin {
            listener: listener.to_string(),
            error,
        };
        let shown = source.display_name();
        let loaded = tokio::task::spawn_blocking(move || match &source {
            PluginSource::File(path) => Plugin::from_file(&runtime, path),
            PluginSource::Bytes { name, bytes } => Plugin::from_bytes(&runtime, name, bytes),
        })
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
            .swap(plugin, &config)
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

    /// Listener `listener`'s settings and versions, as they are now.
    fn find(&self, listener: &str) -> Result<(ServerConfig, Versions), NodeError> {
        let listeners = self.listeners();
        let found = listeners
            .iter()
            .find(|l| l.config.name() == listener)
            .ok_or_else(|| NodeError::NoSuchListener(listener.to_string()))?;
        let versions = found
            .versions
            .clone()
            .ok_or_else(|| NodeError::NotSwappable(listener.to_string()))?;
        Ok((found.config.clone(), versions))
    }

    /// What every listener is doing now, in the node's order: for the admin listener's
    /// metrics and status, or an embedder's own.
    #[must_use]
    pub fn listener_status(&self) -> Vec<ListenerStatus> {
        self.listeners()
            .iter()
            .map(|listener| ListenerStatus {
                name: listener.config.name().to_string(),
                address: listener.local.get().copied().unwrap_or(listener.address),
                stats: Arc::clone(&listener.stats),
                mailboxes: listener.mailboxes.counts(),
                versions: listener
                    .versions
                    .as_ref()
                    .map(Versions::list)
                    .unwrap_or_default(),
                config: listener.settings.load_full(),
            })
            .collect()
    }

    fn listeners(&self) -> MutexGuard<'_, Vec<HandleListener>> {
        // Each critical section is a lookup or one vector operation.
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
            .listeners()
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
        let loaded = match self.find(listener) {
            Ok(_) => self.load(listener, PluginSource::File(path.clone())).await,
            Err(error) => Err(error),
        };
        let loaded = match loaded {
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

/// A [`Server`] of any handler factory, served through a trait object so that one node holds
/// listeners of different factories (plugins and native code).
pub(crate) trait ServeErased: Send + Sync {
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

impl NodeHandle {
    /// Apply `spec`, a config read again (on SIGHUP, say), to the serving node:
    /// - a listener in both keeps serving: its new settings apply to connections that start
    ///   from now on (those that take effect only at a start — `pool_size`,
    ///   `max_connections`, the mailbox limits, `cpu_share`, `shutdown_timeout`, the address
    ///   — are named in a warning), and its plugin file, if its content changed, is swapped
    ///   in as [`NodeHandle::swap_file`] does;
    /// - a listener only in `spec` is loaded, checked, bound and started;
    /// - a listener no longer in `spec` stops accepting and drains (within its
    ///   `shutdown_timeout`).
    ///
    /// What fails (a plugin that does not load or pass its checks, an address taken) is
    /// logged with its listener and leaves that listener as it was; the rest applies. A
    /// config that does not parse never gets here: the caller logs it and changes nothing.
    pub async fn reload(&self, spec: NodeSpec) {
        let wanted: Vec<String> = spec
            .listeners
            .iter()
            .map(|l| l.config.name().to_string())
            .collect();
        let removed: Vec<HandleListener> = {
            let mut listeners = self.listeners();
            let (gone, kept) = std::mem::take(&mut *listeners)
                .into_iter()
                .partition(|l| !wanted.iter().any(|name| name == l.config.name()));
            *listeners = kept;
            gone
        };
        for listener in removed {
            tracing::info!(
                listener = listener.config.name(),
                "removed from the config: it stops accepting and drains"
            );
            listener.stop.cancel();
        }
        for listener in spec.listeners {
            let name = listener.config.name().to_string();
            let known = self.listeners().iter().any(|l| l.config.name() == name);
            if known {
                self.update(listener).await;
            } else if let Err(error) = self.add(listener).await {
                tracing::error!(listener = name, "not added: {error}");
            }
        }
    }

    /// Give listener `config.name()` new settings for the connections that start from now
    /// on, as a reload does for a listener it keeps (those that take effect only at a start
    /// are named in a warning). For a listener a reload cannot reach: one of native code,
    /// whose certificates SIGHUP reads again.
    ///
    /// # Errors
    ///
    /// [`NodeError::NoSuchListener`] when the node has no listener of that name.
    pub fn reconfigure(&self, config: ServerConfig) -> Result<(), NodeError> {
        let mut listeners = self.listeners();
        let name = config.name().to_string();
        let entry = listeners
            .iter_mut()
            .find(|l| l.config.name() == name)
            .ok_or(NodeError::NoSuchListener(name))?;
        apply_settings(entry, config, None);
        Ok(())
    }

    /// A listener of the reloaded config that serves already.
    async fn update(&self, spec: crate::config::spec::ListenerSpec) {
        let name = spec.config.name().to_string();
        let plugin_file = file_of(&spec.plugin);
        {
            let mut listeners = self.listeners();
            let Some(entry) = listeners.iter_mut().find(|l| l.config.name() == name) else {
                return;
            };
            apply_settings(entry, spec.config, Some(spec.address));
            entry.plugin_file.clone_from(&plugin_file);
        }
        if let Some(path) = plugin_file {
            self.swap_file_if_changed(&name, path).await;
        }
    }

    /// A listener new in the reloaded config: loaded, checked and bound here, then started
    /// by the node's serving loop.
    async fn add(&self, spec: crate::config::spec::ListenerSpec) -> Result<(), NodeError> {
        let name = spec.config.name().to_string();
        let plugin_file = file_of(&spec.plugin);
        let plugin = self.load(&name, spec.plugin).await?;
        let versions = Versions::new(plugin);
        let server = Server::new(versions.clone(), spec.config.clone()).without_pool_check();
        server.check().await.map_err(|reason| NodeError::Unfit {
            listener: name.clone(),
            reason,
        })?;
        let bound = TcpListener::bind(spec.address)
            .await
            .map_err(|error| NodeError::Bind {
                listener: name.clone(),
                address: spec.address,
                error,
            })?;
        let local = std::sync::OnceLock::new();
        if let Ok(address) = bound.local_addr() {
            let _ = local.set(address);
        }
        let stop = self.stop.child_token();
        let settings = server.settings();
        let shown = local.get().copied();
        self.listeners().push(HandleListener {
            address: spec.address,
            config: spec.config,
            settings,
            stats: server.stats(),
            mailboxes: server.mailboxes(),
            versions: Some(versions),
            plugin_file,
            stop: stop.clone(),
            local,
        });
        let start = Start {
            name: name.clone(),
            server: Box::new(server),
            bound,
            stop,
        };
        self.starts
            .send(start)
            .map_err(|_| NodeError::NotSwappable(name.clone()))?;
        tracing::info!(listener = name, address = ?shown, "added from the config");
        Ok(())
    }

    /// Where listener `listener` listens now, once bound (one added by a reload too).
    #[must_use]
    pub fn local_addr(&self, listener: &str) -> Option<std::net::SocketAddr> {
        self.listeners()
            .iter()
            .find(|l| l.config.name() == listener)
            .and_then(|l| l.local.get().copied())
    }
}

/// New settings for `entry`'s connections from now on; those that take effect only at a
/// start (and a new `address`, when one is given) are named in a warning.
fn apply_settings(
    entry: &mut HandleListener,
    config: ServerConfig,
    address: Option<std::net::SocketAddr>,
) {
    let name = config.name().to_string();
    let mut at_start = restart_only_changes(&entry.config, &config);
    if address.is_some_and(|address| address != entry.address) {
        at_start.push("address");
    }
    if !at_start.is_empty() {
        tracing::warn!(
            listener = name,
            "changed {} take effect at the next start only",
            at_start.join(", ")
        );
    }
    if entry.config != config {
        entry.settings.store(Arc::new(config.clone()));
        entry.config = config;
        tracing::info!(listener = name, "new settings for new connections");
    }
}

/// The file a plugin comes from, if it comes from one (it is then watched).
fn file_of(source: &PluginSource) -> Option<PathBuf> {
    match source {
        PluginSource::File(path) => Some(path.clone()),
        PluginSource::Bytes { .. } => None,
    }
}

/// The settings that `old` and `new` differ in and that take effect only when a listener
/// starts.
fn restart_only_changes(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.pool_size() != new.pool_size() {
        changed.push("pool_size");
    }
    if old.max_connections() != new.max_connections() {
        changed.push("max_connections");
    }
    if old.mailbox_messages() != new.mailbox_messages() {
        changed.push("mailbox_messages");
    }
    if old.mailbox_bytes() != new.mailbox_bytes() {
        changed.push("mailbox_bytes");
    }
    if old.cpu_share() != new.cpu_share() {
        changed.push("cpu_share");
    }
    if old.shutdown_timeout() != new.shutdown_timeout() {
        changed.push("shutdown_timeout");
    }
    changed
}
