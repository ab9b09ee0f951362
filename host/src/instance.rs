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

use std::fmt;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use crate::bindings::Plugin as PluginWorld;
use crate::bindings::shoal::plugin::types::{CloseReason, ConnInfo, Event, Next};
use crate::config::ServerConfig;
use crate::error::{GuestFault, InstantiateError};
use crate::guest::{ConnSettings, ConnState};
use crate::mailbox::{MailboxLimits, Mailboxes};
use crate::plugin::Plugin;
use crate::stats::Stats;

/// The error the epoch callback raises to stop a call that spent its budget.
#[derive(Debug)]
struct CpuBudgetExceeded(Duration);

impl fmt::Display for CpuBudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU budget of {:?} per call exceeded", self.0)
    }
}

impl std::error::Error for CpuBudgetExceeded {}

/// Run a guest call, started at `started`, within its wall-clock timeout. Dropping a call in
/// progress leaves the instance unusable, which a fault means anyway.
///
/// Most calls finish in their first poll (a guest is suspended only at an epoch tick or when
/// it waits), so the timer is armed only for a call that did not: creating it for every call
/// cost ~200 instructions per round trip.
async fn guarded<R>(
    started: Instant,
    timeout: Duration,
    call: impl Future<Output = wasmtime::Result<R>>,
) -> Result<wasmtime::Result<R>, GuestFault> {
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        return Ok(result);
    }
    let deadline = tokio::time::Instant::from_std(started + timeout);
    tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| GuestFault::CallTimeout(timeout))
}

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
            crate::connection::next_conn_id(),
            Mailboxes::new(MailboxLimits::from(config)),
            plugin,
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
            let budget = &mut store.data_mut().budget;
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
        match self.store.data().memory_refused() {
            Some(limit) => GuestFault::MemoryLimit(limit),
            None => GuestFault::Trap(format!("{error:#}")),
        }
    }

    /// Start the CPU budget of a call; returns when it started.
    fn start_call(&mut self) -> Instant {
        let started = Instant::now();
        self.store.data_mut().budget.start(started);
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
        let result = guarded(started, self.call_timeout, call).await?;
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
        let result = guarded(started, self.call_timeout, call).await?;
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
        let result = guarded(started, self.call_timeout, call).await?;
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
        self.store.data().memory_bytes()
    }

    /// Forget the queued output (once it has been written).
    pub fn clear_output(&mut self) {
        self.store.data_mut().clear_output();
    }

    pub(crate) fn mark_unwritable(&mut self) {
        self.store.data_mut().mark_unwritable();
    }
}
