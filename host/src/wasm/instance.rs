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
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use crate::config::listener::ServerConfig;
use crate::conn_id;
use crate::error::{GuestFault, InstantiateError};
use crate::handler::{ConnectionHandler, HandlerFactory, NewConnection};
use crate::messages::local::Mailboxes;
use crate::messages::types::MailboxLimits;
use crate::observe::stats::Stats;
use crate::wasm::bindings::Plugin as PluginWorld;
use crate::wasm::bindings::shoal::plugin::types::{CloseReason, ConnInfo, Event, Next};
use crate::wasm::limits::{CpuBudgetExceeded, within_call_timeout};
use crate::wasm::plugin::Plugin;
use crate::wasm::store::{ConnSettings, ConnState};

/// A live instance of a plugin with its store: one connection's worth of guest, driven by
/// hand. Call [`Instance::init`] once, then [`Instance::handle`] per event, then
/// [`Instance::close`]; after a [`GuestFault`] make no further call.
pub struct Instance {
    store: Store<ConnState>,
    exports: PluginWorld,
    conn_id: u64,
    call_timeout: Duration,
    /// Keeps the runtime, and so its epoch ticker, alive as long as the instance.
    _plugin: Plugin,
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
        let settings = ConnSettings::new(
            config,
            conn_id::next(),
            Mailboxes::new(MailboxLimits::from(config)),
            plugin.shared_name(),
            Arc::new(Stats::default()),
        );
        Self::with_settings(plugin, &settings).await
    }

    pub(crate) async fn with_settings(
        plugin: &Plugin,
        settings: &ConnSettings,
    ) -> Result<Self, InstantiateError> {
        let mut store = Store::new(plugin.runtime().engine(), ConnState::new(settings));
        store.limiter(|state| state.memory_cap());
        store.epoch_deadline_callback(|mut store| {
            let budget = store.data_mut().budget();
            if budget.charge(Instant::now()) {
                return Err(CpuBudgetExceeded(budget.limit()).into());
            }
            let resumed = budget.resume_clock();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    if let Ok(mut at) = resumed.lock() {
                        *at = Instant::now();
                    }
                }),
            ))
        });
        store.set_epoch_deadline(1);
        let exports = plugin
            .pre()
            .instantiate_async(&mut store)
            .await
            .map_err(|e| InstantiateError {
                plugin: plugin.name().to_string(),
                message: format!("{e:#}"),
            })?;
        Ok(Self {
            store,
            exports,
            conn_id: settings.conn_id,
            call_timeout: settings.call_timeout,
            _plugin: plugin.clone(),
        })
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

    /// Start the CPU budget of a call; returns when it started.
    fn start_call(&mut self) -> Instant {
        let started = Instant::now();
        self.store.data_mut().budget().start(started);
        self.store.set_epoch_deadline(1);
        started
    }

    /// Step 1 of the lifecycle: `Ok(Ok(next))`, or `Ok(Err(text))` when the guest refuses the
    /// connection.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn init(&mut self, info: &ConnInfo) -> Result<Result<Next, String>, GuestFault> {
        let started = self.start_call();
        let handler = self.exports.shoal_plugin_handler();
        let call = handler.call_init(&mut self.store, info);
        let result = within_call_timeout(started, self.call_timeout, call).await?;
        result.map_err(|e| self.fault(&e))
    }

    /// Step 2 of the lifecycle: one event.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn handle(&mut self, event: &Event) -> Result<Next, GuestFault> {
        let started = self.start_call();
        let handler = self.exports.shoal_plugin_handler();
        let call = handler.call_handle(&mut self.store, event);
        let result = within_call_timeout(started, self.call_timeout, call).await?;
        result.map_err(|e| self.fault(&e))
    }

    /// Step 3 of the lifecycle.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] when the guest traps or runs past its CPU budget.
    pub async fn close(&mut self, reason: &CloseReason) -> Result<(), GuestFault> {
        let started = self.start_call();
        let handler = self.exports.shoal_plugin_handler();
        let call = handler.call_close(&mut self.store, reason);
        let result = within_call_timeout(started, self.call_timeout, call).await?;
        result.map_err(|e| self.fault(&e))
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

    async fn create(&self, conn: NewConnection<'_>) -> Result<Instance, InstantiateError> {
        let settings = ConnSettings::new(
            conn.config,
            conn.conn_id,
            conn.mailboxes.clone(),
            self.shared_name(),
            Arc::clone(conn.stats),
        );
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
}
