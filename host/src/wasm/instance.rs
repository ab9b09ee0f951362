//! One plugin instance serving one connection: a fresh `Store`, the three exports, and the
//! per-call CPU budget enforced on every epoch tick.
//!
//! [`Instance`] is public so that embedders can drive a plugin without a socket — to test a
//! plugin, or to measure its lifecycle:
//!
//! ```no_run
//! use shoal_host::{ConnInfo, Event, Instance, Next, Plugin, Runtime, ServerConfig};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let runtime = Runtime::new(Default::default())?;
//! let plugin = Plugin::from_file(&runtime, "target/plugins/echo.wasm")?;
//! let mut instance = Instance::new(&plugin, &ServerConfig::default()).await?;
//! let info = ConnInfo {
//!     id: instance.conn_id(),
//!     peer: "127.0.0.1:1".into(),
//!     local: "127.0.0.1:2".into(),
//!     listener: "test".into(),
//! };
//! assert_eq!(instance.init(&info).await?, Ok(Next::Continue));
//! instance.handle(&Event::Data(b"hi".to_vec())).await?;
//! assert_eq!(instance.output(), b"hi");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, UpdateDeadline};

use crate::config::listener::ServerConfig;
use crate::config::units::size;
use crate::conn_id;
use crate::error::{GuestFault, InstantiateError};
use crate::handler::{ConnectionHandler, HandlerFactory, NewConnection};
use crate::messages::local::Mailboxes;
use crate::messages::types::MailboxLimits;
use crate::messages::waits::MailboxWaits;
use crate::observe::histogram;
use crate::observe::stats::{Call, Stats};
use crate::wasm::bindings::plugin::types::{CloseReason, ConnInfo, Event, Next};
use crate::wasm::cpu::{ConnCpu, CpuGroup};
use crate::wasm::exports::Handler;
use crate::wasm::limits::{CpuBudgetExceeded, within_call_timeout};
use crate::wasm::plugin::Plugin;
use crate::wasm::store::{ConnSettings, ConnState};

/// A live instance of a plugin with its store: one connection's worth of guest, driven by
/// hand. Call [`Instance::init`] once, then [`Instance::handle`] per event, then
/// [`Instance::close`]; after a [`GuestFault`] make no further call.
pub struct Instance {
    store: Store<ConnState>,
    /// The guest's handler functions.
    handler: Handler,
    /// The component instance, where `handoff` is looked up when a swap calls it.
    instance: wasmtime::component::Instance,
    conn_id: u64,
    call_timeout: Duration,
    /// The guest's CPU state (also in the store), for the call's poll wrapper.
    cpu: Arc<ConnCpu>,
    /// Time the guest's calls waited for room in mailboxes: left out of the call timeout.
    mailbox_waits: Arc<MailboxWaits>,
    /// The listener's counters, where its calls are timed.
    stats: Arc<Stats>,
    /// Its plugin: where `handoff` is found. Keeps the runtime, and so its epoch ticker,
    /// alive as long as the instance.
    plugin: Plugin,
}

impl Instance {
    /// Instantiate `plugin` in a fresh store with `config`'s per-connection limits, under a
    /// new connection id. The instance's `mailbox` imports reach a registry of its own,
    /// holding no connection (messages it sends find nobody).
    ///
    /// # Errors
    ///
    /// An [`InstantiateError`] when the instance cannot be created, for example because the
    /// runtime's instance pool is full.
    pub async fn new(plugin: &Plugin, config: &ServerConfig) -> Result<Self, InstantiateError> {
        Self::alone(plugin, config, conn_id::next()).await
    }

    /// An instance for connection `conn_id` outside any listener: alone in a registry of its
    /// own, with counters and a CPU group of its own.
    async fn alone(
        plugin: &Plugin,
        config: &ServerConfig,
        conn_id: u64,
    ) -> Result<Self, InstantiateError> {
        let settings = ConnSettings::new(
            config,
            conn_id,
            Mailboxes::new(MailboxLimits::from(config)),
            plugin.shared_name(),
            Arc::new(Stats::default()),
            Arc::clone(plugin.runtime().scheduler()),
            Arc::new(CpuGroup::new(config.cpu_share())),
        );
        Self::with_settings(plugin, &settings).await
    }

    pub(crate) async fn with_settings(
        plugin: &Plugin,
        settings: &ConnSettings,
    ) -> Result<Self, InstantiateError> {
        let started = histogram::started();
        let mut store = Store::new(plugin.engine(), ConnState::new(settings));
        store.limiter(|state| state.memory_cap());
        store.epoch_deadline_callback(|mut store| {
            let state = store.data_mut();
            if !state.cpu.ran_a_tick() {
                // Still running: the ticker must keep ticking.
                state.cpu.clock().guest_runs();
                // No tick since the guest started running: nothing to charge. It stops only
                // if it holds no core and must wait its turn for one (its listener's guests
                // queue for cores while another listener is active).
                if state.cpu.must_queue() {
                    return Ok(UpdateDeadline::YieldCustom(1, state.cpu.yield_point()));
                }
                return Ok(UpdateDeadline::Continue(1));
            }
            // A tick fell while it ran: it computes across ticks, so the ticker must tick
            // every period.
            state.cpu.clock().guest_interrupted();
            // A sparse tick stands for several periods (`wasm::tick_clock`).
            let step = state.cpu.clock().last_step();
            let exceeded = state.budget.charge(step);
            state.cpu_total.add(state.cpu.clock().span(step));
            if exceeded {
                state.cpu.release_slot();
                return Err(CpuBudgetExceeded(state.budget.limit()).into());
            }
            state.cpu.charge_tick(step);
            Ok(UpdateDeadline::YieldCustom(1, state.cpu.yield_point()))
        });
        store.set_epoch_deadline(1);
        // Instantiation runs the guest's start functions.
        store.data().cpu.polled();
        let instantiated = match plugin.pre().instantiate_async(&mut store).await {
            Ok(instance) => plugin
                .exports()
                .load(&mut store, &instance)
                .map(|handler| (handler, instance)),
            Err(e) => Err(e),
        };
        let (handler, instance) = match instantiated {
            Ok(loaded) => loaded,
            Err(e) => {
                return Err(InstantiateError {
                    plugin: plugin.name().to_string(),
                    message: format!("{e:#}"),
                    memory_needed: store.data().memory.asked(),
                    pool_full: e
                        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                        .is_some(),
                    listener_full: false,
                });
            }
        };
        settings.stats.observe_instantiation(started);
        Ok(Self {
            stats: Arc::clone(&settings.stats),
            cpu: Arc::clone(store.data().cpu()),
            mailbox_waits: Arc::clone(store.data().mailbox_waits()),
            store,
            handler,
            instance,
            conn_id: settings.conn_id,
            call_timeout: settings.call_timeout,
            plugin: plugin.clone(),
        })
    }

    /// Whether `plugin` can start under `config`'s limits: one instance made and dropped, no
    /// export called, no connection id taken.
    ///
    /// # Errors
    ///
    /// The [`InstantiateError`] the first connection would have met (with
    /// [`InstantiateError::memory_needed`] when `memory_limit` is too small for it).
    pub async fn probe(plugin: &Plugin, config: &ServerConfig) -> Result<(), InstantiateError> {
        Self::for_probe(plugin, config).await.map(drop)
    }

    /// An instance of `plugin` under `config`'s limits for a probe connection: id 0 (no
    /// connection id taken), alone in a registry of its own, charged to no listener.
    pub(crate) async fn for_probe(
        plugin: &Plugin,
        config: &ServerConfig,
    ) -> Result<Self, InstantiateError> {
        Self::alone(plugin, config, 0).await
    }

    /// The connection id this instance was created for.
    #[must_use]
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// What a failed call means: a CPU budget spent, a memory limit reached, or a trap.
    fn fault(&self, error: &wasmtime::Error) -> GuestFault {
        if let Some(exceeded) = error.downcast_ref::<CpuBudgetExceeded>() {
            return GuestFault::CpuBudget(exceeded.0);
        }
        match self.store.data().memory.refused() {
            Some(limit) => GuestFault::MemoryLimit(limit),
            None => GuestFault::Trap(format!("{error:#}")),
        }
    }

    /// Start a call: its whole CPU budget, its listener marked active; a deadline at the next
    /// tick, or at once when its listener's guests queue for cores while another listener is
    /// active (then it queues too).
    fn start_call(&mut self) {
        self.store.data_mut().budget.start();
        let queued = self.cpu.start_call();
        self.store.set_epoch_deadline(if queued { 0 } else { 1 });
    }

    /// A call returned or faulted: the guest no longer runs.
    fn end_call(&mut self) {
        self.cpu.release_slot();
    }

    /// The CPU time this instance's guest has used in all its calls, as the epoch ticks
    /// sample it (one tick's length for each tick that passed while it ran).
    #[must_use]
    pub fn cpu_time(&self) -> Duration {
        let state = self.store.data();
        let ticks = u32::try_from(state.budget.total_ticks()).unwrap_or(u32::MAX);
        self.cpu.clock().period() * ticks
    }

    /// Step 1 of the lifecycle: `Ok(Ok(next))`, or `Ok(Err(text))` when the guest refuses the
    /// connection.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn init(&mut self, info: &ConnInfo) -> Result<Result<Next, String>, GuestFault> {
        let started = histogram::started();
        self.start_call();
        let call = self.handler.init(&mut self.store, info);
        let result =
            within_call_timeout(self.call_timeout, &self.cpu, &self.mailbox_waits, call).await;
        self.end_call();
        self.stats.observe_call(Call::Init, started);
        result?.map_err(|e| self.fault(&e))
    }

    /// Step 2 of the lifecycle: one event.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn handle(&mut self, event: &Event) -> Result<Next, GuestFault> {
        let started = histogram::started();
        self.start_call();
        let call = self.handler.handle(&mut self.store, event);
        let result =
            within_call_timeout(self.call_timeout, &self.cpu, &self.mailbox_waits, call).await;
        self.end_call();
        self.stats.observe_call(Call::Handle, started);
        result?.map_err(|e| self.fault(&e))
    }

    /// Step 3 of the lifecycle.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn close(&mut self, reason: &CloseReason) -> Result<(), GuestFault> {
        let started = histogram::started();
        self.start_call();
        let call = self.handler.close(&mut self.store, reason);
        let result =
            within_call_timeout(self.call_timeout, &self.cpu, &self.mailbox_waits, call).await;
        self.end_call();
        self.stats.observe_call(Call::Close, started);
        result?.map_err(|e| self.fault(&e))
    }

    /// Whether the plugin exports `handoff` ([`Instance::snapshot`], [`Instance::resume`]).
    #[must_use]
    pub fn can_hand_off(&self) -> bool {
        self.plugin.exports_handoff()
    }

    /// `handoff.snapshot`: the connection's state, for a newer version's
    /// [`Instance::resume`]. `Ok(None)` when the plugin does not export `handoff`.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn snapshot(&mut self) -> Result<Option<Vec<u8>>, GuestFault> {
        let handoff = self
            .plugin
            .exports()
            .load_handoff(&mut self.store, &self.instance);
        let Some(handoff) = handoff.map_err(|e| self.fault(&e))? else {
            return Ok(None);
        };
        self.start_call();
        let call = handoff.call_snapshot(&mut self.store);
        let result =
            within_call_timeout(self.call_timeout, &self.cpu, &self.mailbox_waits, call).await;
        self.end_call();
        result?.map(Some).map_err(|e| self.fault(&e))
    }

    /// `handoff.resume`, in place of [`Instance::init`]: take over the connection `info` from
    /// an older version's [`Instance::snapshot`]. `Ok(Err(text))` when the guest refuses the
    /// state, or does not export `handoff`.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn resume(
        &mut self,
        info: &ConnInfo,
        state: &[u8],
    ) -> Result<Result<Next, String>, GuestFault> {
        let handoff = self
            .plugin
            .exports()
            .load_handoff(&mut self.store, &self.instance);
        let Some(handoff) = handoff.map_err(|e| self.fault(&e))? else {
            return Ok(Err("the plugin does not export handoff".to_string()));
        };
        self.start_call();
        let call = handoff.call_resume(&mut self.store, info, state);
        let result =
            within_call_timeout(self.call_timeout, &self.cpu, &self.mailbox_waits, call).await;
        self.end_call();
        result?.map_err(|e| self.fault(&e))
    }

    /// Take the output queued so far away, to queue it first in the instance that takes the
    /// connection over ([`Instance::queue_output_first`]).
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        self.store.data_mut().take_output()
    }

    /// Queue `earlier` ahead of this instance's output.
    pub(crate) fn queue_output_first(&mut self, earlier: Vec<u8>) {
        self.store.data_mut().queue_output_first(earlier);
    }

    /// Bytes the guest queued with `send` since the last [`Instance::clear_output`].
    #[must_use]
    pub fn output(&self) -> &[u8] {
        self.store.data().output()
    }

    /// The size of the instance's linear memory in bytes (all its memories added up): what
    /// instantiation gave it plus every `memory.grow` since. Not what is resident — a page
    /// the guest never touched costs nothing.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory.bytes()
    }

    /// Forget the queued output (once it has been written).
    pub fn clear_output(&mut self) {
        self.store.data_mut().clear_output();
    }

    pub(crate) fn mark_unwritable(&mut self) {
        self.store.data_mut().mark_unwritable();
    }
}

/// A plugin makes an [`Instance`] per connection.
impl HandlerFactory for Plugin {
    type Handler = Instance;

    fn name(&self) -> &str {
        Plugin::name(self)
    }

    fn capacity(&self) -> Option<usize> {
        usize::try_from(self.runtime().config().max_instances()).ok()
    }

    async fn check(&self, config: &ServerConfig) -> Result<(), String> {
        Instance::probe(self, config)
            .await
            .map_err(|error| match error.memory_needed() {
                Some(needed) => format!(
                    "memory_limit ({}) is too small for {}: it needs {} of linear memory to \
                     start",
                    size(&config.memory_limit()),
                    self.name(),
                    size(&needed.next_multiple_of(1024)),
                ),
                None => error.to_string(),
            })
    }

    async fn create(&self, conn: NewConnection<'_>) -> Result<Instance, InstantiateError> {
        let mut settings = ConnSettings::new(
            conn.config,
            conn.conn_id,
            conn.mailboxes.clone(),
            self.shared_name(),
            Arc::clone(conn.stats),
            Arc::clone(self.runtime().scheduler()),
            Arc::clone(conn.cpu_group),
        );
        settings.tls = conn.tls.cloned();
        Instance::with_settings(self, &settings).await
    }
}

impl ConnectionHandler for Instance {
    async fn init(&mut self, info: &ConnInfo) -> Result<Result<Next, String>, GuestFault> {
        Instance::init(self, info).await
    }

    async fn handle(&mut self, event: &Event) -> Result<Next, GuestFault> {
        Instance::handle(self, event).await
    }

    async fn close(&mut self, reason: &CloseReason) -> Result<(), GuestFault> {
        Instance::close(self, reason).await
    }

    fn output(&self) -> &[u8] {
        Instance::output(self)
    }

    fn clear_output(&mut self) {
        Instance::clear_output(self);
    }

    fn mark_unwritable(&mut self) {
        Instance::mark_unwritable(self);
    }

    fn cpu_time(&self) -> Duration {
        Instance::cpu_time(self)
    }
}
