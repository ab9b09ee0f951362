//! A listener's plugin versions: the current one, which new connections get, and the older
//! ones still serving the connections that started on them.
//!
//! A swap loads nothing itself: it takes a compiled [`Plugin`], checks it against the
//! listener's settings, runs a probe connection's `init` (and `close`) on it, and only then
//! makes it current — one atomic pointer store, so accepting never waits on a swap. A
//! connection holds its version until it ends; a version no connection holds and that is no
//! longer current is dropped, and its compiled code with it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::listener::{HandoffPolicy, ServerConfig};
use crate::error::{GuestFault, InstantiateError, SwapError};
use crate::handler::{
    ConnectionHandler, HandlerFactory, HandoffOutcome, NewConnection, SleepOutcome, WakeOutcome,
};
use crate::messages::local::{Mailboxes, MoveRequest};
use crate::observe::stats::Stats;
use crate::wasm::bindings::plugin::types::{CloseReason, ConnInfo, Event, Next};
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
    /// The version that was current before the current one, kept to roll back to.
    previous: Mutex<Option<Arc<Version>>>,
    /// The content of the last version rolled back: refused until the file changes.
    rolled_back: Mutex<Option<ContentHash>>,
    /// The listener, known from its first connection: its name (for the rollback's log line)
    /// and its connection registry, through which the connections of a retired version are
    /// closed at its drain deadline.
    listener: std::sync::OnceLock<(String, Mailboxes)>,
    /// One permit per instance the listener may have alive (`max_instances`, from its
    /// first connection's settings): an awake connection holds one, a hibernating one none,
    /// and a waking one waits for one in turn.
    awake: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
    /// A connection stayed awake for its state's size: said once at `warn`.
    warned_kept_awake: AtomicBool,
}

struct Version {
    number: u64,
    plugin: Plugin,
    loaded_at: SystemTime,
    /// Connections running on it now.
    live: AtomicUsize,
    /// Connections it has been given so far (each one's place in that order).
    opened: AtomicUsize,
    /// Of its first `watch.window` connections, those that faulted.
    faulted: AtomicUsize,
    /// The ids of its live connections.
    connections: Mutex<std::collections::HashSet<u64>>,
    /// Connections that could not move to it (logged loudly once).
    refused_moves: AtomicUsize,
    /// When a crash loop rolls it back; `None` for a first version, which has nothing to
    /// roll back to.
    watch: Option<RollbackWatch>,
}

/// A new version's first connections, watched for faults.
#[derive(Clone, Copy)]
struct RollbackWatch {
    window: usize,
    fault_ratio: f64,
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
    /// How many of its first connections (those watched for a crash loop) faulted.
    pub faulted_connections: usize,
}

impl Versions {
    /// A listener's versions, `plugin` the first and current.
    #[must_use]
    pub fn new(plugin: Plugin) -> Self {
        let name = plugin.name().to_string();
        let capacity = HandlerFactory::capacity(&plugin);
        let first = Arc::new(Version::new(1, plugin, None));
        Self {
            shared: Arc::new(Shared {
                made: Mutex::new(vec![Arc::downgrade(&first)]),
                current: ArcSwap::new(first),
                next_number: AtomicU64::new(2),
                swapping: tokio::sync::Mutex::new(()),
                name,
                capacity,
                previous: Mutex::new(None),
                rolled_back: Mutex::new(None),
                listener: std::sync::OnceLock::new(),
                awake: std::sync::OnceLock::new(),
                warned_kept_awake: AtomicBool::new(false),
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
        if *lock(&self.shared.rolled_back) == Some(*plugin.content_hash()) {
            return Err(SwapError::RolledBack {
                plugin: plugin.name().to_string(),
            });
        }
        if let Err(reason) = HandlerFactory::check(&plugin, config).await {
            return Err(SwapError::Unfit {
                plugin: plugin.name().to_string(),
                reason,
            });
        }
        probe(&plugin, config).await?;
        let number = self.shared.next_number.fetch_add(1, Ordering::Relaxed);
        let watch = RollbackWatch {
            window: config.rollback_window(),
            fault_ratio: config.rollback_fault_ratio(),
        };
        let version = Arc::new(Version::new(number, plugin, Some(watch)));
        {
            let mut made = self.shared.made();
            made.retain(|version| version.strong_count() > 0);
            made.push(Arc::downgrade(&version));
        }
        let previous = self.shared.current.swap(Arc::clone(&version));
        *lock(&self.shared.previous) = Some(Arc::clone(&previous));
        *lock(&self.shared.rolled_back) = None;
        let immediate =
            config.handoff() == HandoffPolicy::Immediate && version.plugin.exports_handoff();
        if immediate {
            // Every older version's connections that can move, not only the previous one's.
            self.shared.request_moves(MoveRequest::IfPossible);
        }
        let moving = immediate && previous.plugin.exports_handoff();
        if let Some(drain) = config.drain_timeout() {
            let request = match config.handoff() {
                HandoffPolicy::Never => MoveRequest::End,
                _ => MoveRequest::OrEnd,
            };
            self.drain_at(Arc::downgrade(&previous), drain, request, config.name());
        }
        tracing::info!(
            listener = config.name(),
            plugin = version.plugin.name(),
            hash = %version.plugin.content_hash(),
            "version {number} is current; version {} {} its {} connections",
            previous.number,
            if moving { "hands off" } else { "keeps" },
            previous.live.load(Ordering::Relaxed),
        );
        Ok(version.info(true))
    }

    /// After `drain`, move the connections still on `retired` to the current version or,
    /// when they cannot move, close them (unless `retired` is current again: a rollback).
    fn drain_at(
        &self,
        retired: Weak<Version>,
        drain: Duration,
        request: MoveRequest,
        listener: &str,
    ) {
        let shared = Arc::clone(&self.shared);
        let listener = listener.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            let Some(version) = retired.upgrade() else {
                return;
            };
            if Arc::ptr_eq(&version, &shared.current.load()) {
                return;
            }
            let asked = shared.ask_to_move(&version, request);
            if asked == 0 {
                return;
            }
            let what = if request == MoveRequest::End {
                "close"
            } else {
                "move to the current version or close"
            };
            tracing::info!(
                listener,
                "drain deadline: the {asked} connections still on version {} {what}",
                version.number,
            );
        });
    }

    /// Make the version that was current before the current one current again, as an
    /// operator asks (`shoal rollback`): new connections get it; connections on the version
    /// rolled back from stay on it until they end. Only one step back is kept: a second
    /// rollback is refused until a new version is swapped in.
    ///
    /// # Errors
    ///
    /// [`SwapError::NothingToRollBackTo`] when no earlier version is kept.
    pub async fn rollback(&self, listener: &str) -> Result<VersionInfo, SwapError> {
        self.shared.rollback(listener).await
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
        lock(&self.made)
    }

    /// Ask every connection of an older version that can hand off to move to the current one.
    fn request_moves(&self, request: MoveRequest) {
        let current = self.current.load_full();
        let older: Vec<Arc<Version>> = self
            .made()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|version| !Arc::ptr_eq(version, &current) && version.plugin.exports_handoff())
            .collect();
        for version in older {
            self.ask_to_move(&version, request);
        }
    }

    /// Ask every connection on `version` to move (through its mailbox); how many were asked.
    fn ask_to_move(&self, version: &Version, request: MoveRequest) -> usize {
        let Some((_, mailboxes)) = self.listener.get() else {
            return 0;
        };
        let ids: Vec<u64> = lock(&version.connections).iter().copied().collect();
        for &id in &ids {
            mailboxes.request_move(id, request);
        }
        ids.len()
    }

    /// The listener's instance permits, made with its first connection's `max_instances`.
    fn permits(&self, config: &ServerConfig) -> &Arc<tokio::sync::Semaphore> {
        self.awake
            .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(config.max_instances())))
    }

    /// One of the listener's instance permits for a connection about to get an instance of
    /// `version` (a new one, or a sleeper waking): at once if one is free, else in turn
    /// with the other waiting connections, up to the call timeout — past it, the listener's
    /// `max_instances` limit.
    async fn instance_permit(
        &self,
        config: &ServerConfig,
        version: &Version,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, InstantiateError> {
        let permits = self.permits(config);
        if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
            return Ok(permit);
        }
        let waited =
            tokio::time::timeout(config.call_timeout(), Arc::clone(permits).acquire_owned());
        match waited.await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(InstantiateError::listener_full(
                version.plugin.name(),
                config.max_instances(),
            )),
        }
    }

    /// See [`Versions::rollback`].
    async fn rollback(&self, listener: &str) -> Result<VersionInfo, SwapError> {
        let _one_at_a_time = self.swapping.lock().await;
        let Some(previous) = lock(&self.previous).take() else {
            return Err(SwapError::NothingToRollBackTo {
                current: self.current.load().number,
            });
        };
        let replaced = self.current.swap(Arc::clone(&previous));
        tracing::info!(
            listener,
            plugin = previous.plugin.name(),
            hash = %previous.plugin.content_hash(),
            "version {} rolled back to version {} on request; version {} keeps its {} \
             connections",
            replaced.number,
            previous.number,
            replaced.number,
            replaced.live.load(Ordering::Relaxed),
        );
        Ok(previous.info(true))
    }

    /// One of `version`'s connections (the `place`-th it was given) faulted: past the
    /// version's fault ratio, while it is still current, the previous version is made current
    /// again and the faulty content refused until its file changes.
    fn faulted(&self, version: &Arc<Version>, place: usize) {
        let Some(watch) = version.watch else {
            return;
        };
        if place >= watch.window {
            return;
        }
        let faulted = version.faulted.fetch_add(1, Ordering::Relaxed) + 1;
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        if (faulted as f64) <= watch.fault_ratio * watch.window as f64 {
            return;
        }
        let Some(previous) = lock(&self.previous).take() else {
            return;
        };
        let replaced = self
            .current
            .compare_and_swap(version, Arc::clone(&previous));
        if !Arc::ptr_eq(&replaced, version) {
            // Another swap came first: this version is no longer current.
            return;
        }
        *lock(&self.rolled_back) = Some(*version.plugin.content_hash());
        let listener = self.listener.get().map_or("", |(name, _)| name.as_str());
        tracing::warn!(
            listener,
            plugin = version.plugin.name(),
            hash = %version.plugin.content_hash(),
            "version {} rolled back to version {}: {faulted} of its first {} connections \
             faulted; its content is refused until the file changes",
            version.number,
            previous.number,
            watch.window,
        );
    }
}

/// A lock whose critical sections cannot panic half-way.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Version {
    fn new(number: u64, plugin: Plugin, watch: Option<RollbackWatch>) -> Self {
        Self {
            number,
            plugin,
            loaded_at: SystemTime::now(),
            live: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
            faulted: AtomicUsize::new(0),
            connections: Mutex::default(),
            refused_moves: AtomicUsize::new(0),
            watch,
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
            faulted_connections: self.faulted.load(Ordering::Relaxed),
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

/// A connection's instance of the version it started on (or moved to), which it keeps
/// alive — or, while the connection hibernates, only the state its last instance gave up.
pub struct VersionedInstance {
    /// `None` while the connection hibernates. Boxed: a sleeper keeps a pointer's room for
    /// it rather than the whole instance's (176 bytes) in its task.
    instance: Option<Box<Instance>>,
    /// While it hibernates: its last instance's `snapshot`.
    asleep: Option<Box<[u8]>>,
    conn_id: u64,
    /// CPU time used by the instances it had before this one (it hibernated).
    cpu_before: Duration,
    version: Arc<Version>,
    /// Counted among `version`'s live connections (not while it hibernates).
    on_version: bool,
    /// Its place among the version's connections.
    place: usize,
    /// Counted as faulted already.
    faulted: bool,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    /// Its share of the listener's `max_instances`, held while it has an instance.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What a hibernating connection's handler is asked to do before waking: a bug in the
/// connection task, reported as a fault rather than a panic.
fn asleep_fault() -> GuestFault {
    GuestFault::Trap("the connection hibernates: it must be woken before a call".to_string())
}

impl VersionedInstance {
    /// The instance, unless the connection hibernates.
    fn awake(&mut self) -> Result<&mut Instance, GuestFault> {
        self.instance.as_deref_mut().ok_or_else(asleep_fault)
    }

    /// Pass a call's result on, counting a fault against the version.
    fn watch<T>(&mut self, result: Result<T, GuestFault>) -> Result<T, GuestFault> {
        if result.is_err() {
            self.count_fault();
        }
        result
    }

    /// Count a fault of the connection against its version, once.
    fn count_fault(&mut self) {
        if !self.faulted {
            self.faulted = true;
            self.shared.faulted(&self.version, self.place);
        }
    }
}

impl VersionedInstance {
    /// Move the connection to the current version: the old instance's snapshot, a new
    /// instance of the current version, its `resume`; then the new instance serves the
    /// connection and the old one is dropped without `close`.
    async fn move_to_current(
        &mut self,
        conn: &NewConnection<'_>,
        info: &ConnInfo,
    ) -> HandoffOutcome {
        let target = self.shared.current.load_full();
        if Arc::ptr_eq(&target, &self.version) {
            return HandoffOutcome::Stayed("it runs the current version".to_string());
        }
        let Some(current) = self.instance.as_mut() else {
            return HandoffOutcome::Stayed(
                "it hibernates, and wakes on the current version".to_string(),
            );
        };
        if !current.can_hand_off() {
            return HandoffOutcome::Stayed(format!(
                "version {} does not export handoff",
                self.version.number
            ));
        }
        if !target.plugin.exports_handoff() {
            return HandoffOutcome::Stayed(format!(
                "version {} does not export handoff",
                target.number
            ));
        }
        let started = std::time::Instant::now();
        let state = match current.snapshot().await {
            Ok(Some(state)) => state,
            Ok(None) => return HandoffOutcome::Stayed("no handoff export".to_string()),
            Err(fault) => {
                self.count_fault();
                return HandoffOutcome::Faulted(fault);
            }
        };
        let place = target.opened.fetch_add(1, Ordering::Relaxed);
        let mut instance = match target.plugin.create(conn.clone()).await {
            Ok(instance) => instance,
            // Not the new version's fault (the instance pool is full, say): not counted.
            Err(error) => return self.stays(&target, &format!("no instance: {error}")),
        };
        match instance.resume(info, &state).await {
            Ok(Ok(next)) => {
                if let Some(old) = self.instance.as_mut() {
                    instance.queue_output_first(old.take_output());
                    self.cpu_before += old.cpu_time();
                }
                let from = self.version.number;
                let old = self.instance.replace(Box::new(instance));
                self.leave_version();
                self.join(target, place);
                drop(old);
                tracing::debug!(
                    conn = self.conn_id,
                    "moved from version {from} to version {} with {} bytes of state in {:?}",
                    self.version.number,
                    state.len(),
                    started.elapsed(),
                );
                HandoffOutcome::Moved(next)
            }
            Ok(Err(refusal)) => self.stays(&target, &format!("`resume` refused: {refusal}")),
            Err(fault) => {
                self.shared.faulted(&target, place);
                self.stays(&target, &format!("`resume` failed: {fault}"))
            }
        }
    }

    /// The connection stays on its version: logged, with `why`.
    fn stays(&self, target: &Version, why: &str) -> HandoffOutcome {
        let why = format!(
            "cannot move to version {}: {why}; it stays on version {}",
            target.number, self.version.number
        );
        // Once per version at `warn`: a version that refuses every state would otherwise log
        // a line per connection.
        if target.refused_moves.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                conn = self.conn_id,
                plugin = target.plugin.name(),
                "{why} (further refusals of version {} at debug)",
                target.number
            );
        } else {
            tracing::debug!(conn = self.conn_id, "{why}");
        }
        HandoffOutcome::Stayed(why)
    }

    /// The connection no longer runs on its version.
    fn leave_version(&mut self) {
        if std::mem::take(&mut self.on_version) {
            self.version.live.fetch_sub(1, Ordering::Relaxed);
            lock(&self.version.connections).remove(&self.conn_id);
        }
    }

    /// The connection runs on `version` now, its `place`-th connection.
    fn join(&mut self, version: Arc<Version>, place: usize) {
        version.live.fetch_add(1, Ordering::Relaxed);
        lock(&version.connections).insert(self.conn_id);
        self.version = version;
        self.place = place;
        self.faulted = false;
        self.on_version = true;
    }

    /// Hibernate: keep the instance's `snapshot`, drop the instance (its pool slot comes
    /// free) and leave the version, whose drain then need not wait for this connection.
    async fn sleep(&mut self, conn: &NewConnection<'_>) -> SleepOutcome {
        let Some(instance) = self.instance.as_mut() else {
            return SleepOutcome::Asleep;
        };
        if !instance.can_hand_off() {
            return SleepOutcome::Cannot(format!(
                "version {} does not export handoff",
                self.version.number
            ));
        }
        let limit = conn.config.hibernate_state_limit();
        match instance.snapshot().await {
            Ok(Some(state)) if state.len() > limit => {
                self.stats.count_kept_awake();
                let why = format!(
                    "its state of {} bytes is larger than hibernate_state_limit ({limit} bytes)",
                    state.len()
                );
                // Once per listener at `warn`: a plugin whose states are all too large would
                // otherwise log a line per connection per quiet spell.
                if !self.shared.warned_kept_awake.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        conn = self.conn_id,
                        plugin = self.shared.name,
                        "a connection stays awake: {why} (further ones at debug)"
                    );
                } else {
                    tracing::debug!(conn = self.conn_id, "stays awake: {why}");
                }
                SleepOutcome::KeptAwake(why)
            }
            Ok(Some(state)) => {
                self.cpu_before += instance.cpu_time();
                self.stats.count_asleep(state.len());
                self.asleep = Some(state.into_boxed_slice());
                self.instance = None;
                self.permit = None;
                self.leave_version();
                SleepOutcome::Asleep
            }
            Ok(None) => SleepOutcome::Cannot("no handoff export".to_string()),
            Err(fault) => {
                self.count_fault();
                SleepOutcome::Faulted(fault)
            }
        }
    }

    /// Wake: an instance of the listener's current version — waiting, up to the call
    /// timeout, for a pool slot to come free — takes the kept state with `resume`. A version
    /// swapped in meanwhile is woken on: this is a handoff.
    async fn wake_up(&mut self, conn: &NewConnection<'_>, info: &ConnInfo) -> WakeOutcome {
        let Some(state) = self.asleep.take() else {
            return WakeOutcome::Awake(Next::Continue);
        };
        self.stats.count_awake(state.len());
        let started = tokio::time::Instant::now();
        let deadline = started + conn.config.call_timeout();
        let target = self.shared.current.load_full();
        let permit = match self.shared.instance_permit(conn.config, &target).await {
            Ok(permit) => permit,
            Err(error) => return WakeOutcome::NoInstance(error),
        };
        let place = target.opened.fetch_add(1, Ordering::Relaxed);
        let mut instance = loop {
            match target.plugin.create(conn.clone()).await {
                Ok(instance) => break instance,
                Err(error) if error.is_pool_full() => {
                    if tokio::time::Instant::now() >= deadline {
                        return WakeOutcome::NoInstance(error);
                    }
                    tokio::time::sleep(POOL_RETRY).await;
                }
                Err(error) => return WakeOutcome::NoInstance(error),
            }
        };
        match instance.resume(info, &state).await {
            Ok(Ok(next)) => {
                self.instance = Some(Box::new(instance));
                self.permit = Some(permit);
                self.join(target, place);
                tracing::trace!(
                    conn = self.conn_id,
                    "woke on version {} with {} bytes of state in {:?}",
                    self.version.number,
                    state.len(),
                    started.elapsed(),
                );
                WakeOutcome::Awake(next)
            }
            Ok(Err(refusal)) => {
                self.shared.faulted(&target, place);
                WakeOutcome::Refused(refusal)
            }
            Err(fault) => {
                self.shared.faulted(&target, place);
                WakeOutcome::Faulted(fault)
            }
        }
    }
}

/// How often a waking connection that found the engine's instance pool full (all of its
/// listener's share free, other listeners holding the rest) tries again.
const POOL_RETRY: Duration = Duration::from_millis(5);

impl Drop for VersionedInstance {
    fn drop(&mut self) {
        self.leave_version();
        if let Some(state) = &self.asleep {
            self.stats.count_awake(state.len());
        }
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
        let place = version.opened.fetch_add(1, Ordering::Relaxed);
        let conn_id = conn.conn_id;
        let stats = Arc::clone(conn.stats);
        if self.shared.listener.get().is_none() {
            let listener = (conn.config.name().to_string(), conn.mailboxes.clone());
            let _ = self.shared.listener.set(listener);
        }
        // With every instance the listener may have awake in use, a new connection waits
        // for one (in turn with the waking ones) up to the call timeout.
        let permit = self.shared.instance_permit(conn.config, &version).await?;
        let instance = match version.plugin.create(conn).await {
            Ok(instance) => instance,
            Err(error) => {
                // A version that cannot even start its instances is as faulty (a full pool
                // is not its fault).
                if !error.is_pool_full() {
                    self.shared.faulted(&version, place);
                }
                return Err(error);
            }
        };
        version.live.fetch_add(1, Ordering::Relaxed);
        lock(&version.connections).insert(conn_id);
        Ok(VersionedInstance {
            instance: Some(Box::new(instance)),
            asleep: None,
            conn_id,
            cpu_before: Duration::ZERO,
            version,
            on_version: true,
            place,
            faulted: false,
            shared: Arc::clone(&self.shared),
            stats,
            permit: Some(permit),
        })
    }
}

impl ConnectionHandler for VersionedInstance {
    async fn init(&mut self, info: &ConnInfo) -> Result<Result<Next, String>, GuestFault> {
        let result = self.awake()?.init(info).await;
        self.watch(result)
    }

    async fn handle(&mut self, event: &Event) -> Result<Next, GuestFault> {
        let result = self.awake()?.handle(event).await;
        self.watch(result)
    }

    async fn close(&mut self, reason: &CloseReason) -> Result<(), GuestFault> {
        let result = self.awake()?.close(reason).await;
        self.watch(result)
    }

    fn output(&self) -> &[u8] {
        self.instance.as_deref().map_or(&[], Instance::output)
    }

    fn clear_output(&mut self) {
        if let Some(instance) = self.instance.as_mut() {
            instance.clear_output();
        }
    }

    fn mark_unwritable(&mut self) {
        if let Some(instance) = self.instance.as_mut() {
            instance.mark_unwritable();
        }
    }

    fn cpu_time(&self) -> Duration {
        self.cpu_before
            + self
                .instance
                .as_deref()
                .map_or(Duration::ZERO, Instance::cpu_time)
    }

    fn version(&self) -> Option<u64> {
        Some(self.version.number)
    }

    async fn hand_off(&mut self, conn: &NewConnection<'_>, info: &ConnInfo) -> HandoffOutcome {
        self.move_to_current(conn, info).await
    }

    async fn hibernate(&mut self, conn: &NewConnection<'_>) -> SleepOutcome {
        self.sleep(conn).await
    }

    fn is_asleep(&self) -> bool {
        self.asleep.is_some()
    }

    async fn wake(&mut self, conn: &NewConnection<'_>, info: &ConnInfo) -> WakeOutcome {
        self.wake_up(conn, info).await
    }
}
