//! A listener's plugin versions: the current one, which new connections get, and the older
//! ones still serving the connections that started on them.
//!
//! A swap loads nothing itself: it takes a compiled [`Plugin`], checks it against the
//! listener's settings, runs a probe connection's `init` (and `close`) on it, and only then
//! makes it current — one atomic pointer store, so accepting never waits on a swap. A
//! connection holds its version until it ends; a version no connection holds and that is no
//! longer current is dropped, and its compiled code with it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::listener::ServerConfig;
use crate::error::{GuestFault, InstantiateError, SwapError};
use crate::handler::{ConnectionHandler, HandlerFactory, NewConnection};
use crate::wasm::bindings::shoal::plugin::types::{CloseReason, ConnInfo, Event, Next};
use crate::wasm::digest::ContentHash;
use crate::wasm::instance::Instance;
use crate::wasm::plugin::Plugin;

/// The versions of one listener's plugin. Cloning it is cheap; every clone is the same set.
///
/// ```no_run
/// use shoal_host::{Plugin, Runtime, RuntimeConfig, Server, ServerConfig, Versions};
///
/// # async fn run() -> anyhow::Result<()> {
/// let runtime = Runtime::new(RuntimeConfig::default())?;
/// let config = ServerConfig::builder().name("echo").build()?;
/// let versions = Versions::new(Plugin::from_file(&runtime, "target/plugins/echo.wasm")?);
/// let server = Server::new(versions.clone(), config.clone());
/// // … serve it; later, while it serves:
/// let v2 = Plugin::from_file(&runtime, "target/plugins/echo-v2.wasm")?;
/// let current = versions.swap(v2, &config).await?;
/// assert_eq!(current.number, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Versions {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<Version>,
    /// Every version made, oldest first, held weakly: a version lives while it is current
    /// or serves a connection.
    made: Mutex<Vec<Weak<Version>>>,
    next_number: AtomicU64,
    /// One swap at a time: two would both probe and then race to be current.
    swapping: tokio::sync::Mutex<()>,
    /// The first version's plugin name, for logs (a listener keeps its name across swaps).
    name: String,
    /// The instance pool's size (all versions share the node's engine).
    capacity: Option<usize>,
}

struct Version {
    number: u64,
    plugin: Plugin,
    loaded_at: SystemTime,
    /// Connections running on it now.
    live: AtomicUsize,
}

/// One version of a listener's plugin, as [`Versions::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// Numbered from 1 per listener, in the order they were made current.
    pub number: u64,
    /// The plugin's name (its file's stem).
    pub plugin: String,
    /// The SHA-256 of the plugin's bytes.
    pub hash: ContentHash,
    /// When it was made current.
    pub loaded_at: SystemTime,
    /// Connections running on it now.
    pub live_connections: usize,
    /// Whether new connections get it.
    pub current: bool,
}

impl Versions {
    /// A listener's versions, `plugin` the first and current.
    #[must_use]
    pub fn new(plugin: Plugin) -> Self {
        let name = plugin.name().to_string();
        let capacity = HandlerFactory::capacity(&plugin);
        let first = Arc::new(Version::new(1, plugin));
        Self {
            shared: Arc::new(Shared {
                made: Mutex::new(vec![Arc::downgrade(&first)]),
                current: ArcSwap::new(first),
                next_number: AtomicU64::new(2),
                swapping: tokio::sync::Mutex::new(()),
                name,
                capacity,
            }),
        }
    }

    /// Make `plugin` the current version of the listener whose settings are `config`, once
    /// it has passed the listener's checks and a probe connection: an instance under the
    /// listener's limits whose `init` (then `close(shutdown)`) returns without a trap or a
    /// limit. The probe's [`ConnInfo`] has id 0, peer and local address `probe`, and the
    /// listener's name followed by ` (probe)`; its messages reach nobody and nothing reaches a
    /// socket. Connections open now stay on their versions.
    ///
    /// # Errors
    ///
    /// A [`SwapError`]; the current version stays.
    pub async fn swap(
        &self,
        plugin: Plugin,
        config: &ServerConfig,
    ) -> Result<VersionInfo, SwapError> {
        let _one_at_a_time = self.shared.swapping.lock().await;
        if let Err(reason) = HandlerFactory::check(&plugin, config).await {
            return Err(SwapError::Unfit {
                plugin: plugin.name().to_string(),
                reason,
            });
        }
        probe(&plugin, config).await?;
        let number = self.shared.next_number.fetch_add(1, Ordering::Relaxed);
        let version = Arc::new(Version::new(number, plugin));
        {
            let mut made = self.shared.made();
            made.retain(|version| version.strong_count() > 0);
            made.push(Arc::downgrade(&version));
        }
        let previous = self.shared.current.swap(Arc::clone(&version));
        tracing::info!(
            listener = config.name(),
            plugin = version.plugin.name(),
            hash = %version.plugin.content_hash(),
            "version {number} is current; version {} keeps its {} connections",
            previous.number,
            previous.live.load(Ordering::Relaxed),
        );
        Ok(version.info(true))
    }

    /// The current version.
    #[must_use]
    pub fn current(&self) -> VersionInfo {
        self.shared.current.load().info(true)
    }

    /// The current version and every older one still serving a connection, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<VersionInfo> {
        let current = self.shared.current.load_full();
        let mut made = self.shared.made();
        made.retain(|version| version.strong_count() > 0);
        made.iter()
            .filter_map(Weak::upgrade)
            .filter(|version| {
                Arc::ptr_eq(version, &current) || version.live.load(Ordering::Relaxed) > 0
            })
            .map(|version| version.info(Arc::ptr_eq(&version, &current)))
            .collect()
    }
}

impl Shared {
    fn made(&self) -> MutexGuard<'_, Vec<Weak<Version>>> {
        // Each critical section is a few vector operations that cannot panic half-way.
        self.made.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Version {
    fn new(number: u64, plugin: Plugin) -> Self {
        Self {
            number,
            plugin,
            loaded_at: SystemTime::now(),
            live: AtomicUsize::new(0),
        }
    }

    fn info(&self, current: bool) -> VersionInfo {
        VersionInfo {
            number: self.number,
            plugin: self.plugin.name().to_string(),
            hash: *self.plugin.content_hash(),
            loaded_at: self.loaded_at,
            live_connections: self.live.load(Ordering::Relaxed),
            current,
        }
    }
}

/// The probe connection: an instance under the listener's limits, `init`, then
/// `close(shutdown)`.
async fn probe(plugin: &Plugin, config: &ServerConfig) -> Result<(), SwapError> {
    let failed = |export: &'static str, fault: GuestFault| SwapError::Probe {
        plugin: plugin.name().to_string(),
        export,
        fault,
    };
    let mut instance =
        Instance::for_probe(plugin, config)
            .await
            .map_err(|error| SwapError::Unfit {
                plugin: plugin.name().to_string(),
                reason: error.to_string(),
            })?;
    let info = ConnInfo {
        id: 0,
        peer: "probe".to_string(),
        local: "probe".to_string(),
        listener: format!("{} (probe)", config.name()),
    };
    match instance.init(&info).await {
        // A refusal is an answer, not a fault (a plugin may refuse whom it likes); a refused
        // connection gets no `close`.
        Ok(Err(_refusal)) => Ok(()),
        Ok(Ok(_)) => instance
            .close(&CloseReason::Shutdown)
            .await
            .map_err(|fault| failed("close", fault)),
        Err(fault) => Err(failed("init", fault)),
    }
}

/// A connection's instance of the version it started on, which it keeps alive.
pub struct VersionedInstance {
    instance: Instance,
    version: Arc<Version>,
}

impl Drop for VersionedInstance {
    fn drop(&mut self) {
        self.version.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HandlerFactory for Versions {
    type Handler = VersionedInstance;

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn capacity(&self) -> Option<usize> {
        self.shared.capacity
    }

    async fn check(&self, config: &ServerConfig) -> Result<(), String> {
        let current = self.shared.current.load_full();
        HandlerFactory::check(&current.plugin, config).await
    }

    async fn create(&self, conn: NewConnection<'_>) -> Result<VersionedInstance, InstantiateError> {
        let version = self.shared.current.load_full();
        let instance = version.plugin.create(conn).await?;
        version.live.fetch_add(1, Ordering::Relaxed);
        Ok(VersionedInstance { instance, version })
    }
}

impl ConnectionHandler for VersionedInstance {
    async fn init(&mut self, info: &ConnInfo) -> Result<Result<Next, String>, GuestFault> {
        self.instance.init(info).await
    }

    async fn handle(&mut self, event: &Event) -> Result<Next, GuestFault> {
        self.instance.handle(event).await
    }

    async fn close(&mut self, reason: &CloseReason) -> Result<(), GuestFault> {
        self.instance.close(reason).await
    }

    fn output(&self) -> &[u8] {
        self.instance.output()
    }

    fn clear_output(&mut self) {
        self.instance.clear_output();
    }

    fn mark_unwritable(&mut self) {
        self.instance.mark_unwritable();
    }

    fn cpu_time(&self) -> Duration {
        self.instance.cpu_time()
    }

    fn version(&self) -> Option<u64> {
        Some(self.version.number)
    }
}
