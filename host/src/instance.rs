//! One plugin instance serving one connection: a fresh `Store`, the three exports, and the
//! per-call CPU budget enforced on every epoch tick.

use std::fmt;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use crate::bindings::Plugin as PluginWorld;
use crate::bindings::shoal::plugin::types::{CloseReason, ConnInfo, Event, Next};
use crate::guest::{ConnSettings, ConnState};
use crate::plugin::Plugin;

/// A guest call that did not return: the instance must not be used again.
#[derive(Debug)]
pub(crate) enum GuestFault {
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access, a failed allocation).
    Trap(String),
    /// The call ran past its CPU budget and was stopped.
    CpuBudget(Duration),
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trap(message) => write!(f, "guest trapped: {message}"),
            Self::CpuBudget(limit) => write!(f, "guest call ran past its CPU budget of {limit:?}"),
        }
    }
}

/// The error the epoch callback raises to stop a call that spent its budget.
#[derive(Debug)]
struct CpuBudgetExceeded(Duration);

impl fmt::Display for CpuBudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU budget of {:?} per call exceeded", self.0)
    }
}

impl std::error::Error for CpuBudgetExceeded {}

fn fault(error: &wasmtime::Error) -> GuestFault {
    match error.downcast_ref::<CpuBudgetExceeded>() {
        Some(exceeded) => GuestFault::CpuBudget(exceeded.0),
        None => GuestFault::Trap(format!("{error:#}")),
    }
}

/// A live instance of a plugin with its store.
pub(crate) struct GuestInstance {
    store: Store<ConnState>,
    exports: PluginWorld,
}

impl GuestInstance {
    /// Instantiate `plugin` in a fresh store.
    pub(crate) async fn new(plugin: &Plugin, settings: &ConnSettings) -> wasmtime::Result<Self> {
        let mut store = Store::new(plugin.runtime().engine(), ConnState::new(settings));
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
        let exports = plugin.pre().instantiate_async(&mut store).await?;
        Ok(Self { store, exports })
    }

    fn start_call(&mut self) {
        self.store.data_mut().budget.start(Instant::now());
        self.store.set_epoch_deadline(1);
    }

    /// Step 1 of the lifecycle.
    pub(crate) async fn init(
        &mut self,
        info: &ConnInfo,
    ) -> Result<Result<Next, String>, GuestFault> {
        self.start_call();
        let handler = self.exports.shoal_plugin_handler();
        handler
            .call_init(&mut self.store, info)
            .await
            .map_err(|e| fault(&e))
    }

    /// Step 2 of the lifecycle.
    pub(crate) async fn handle(&mut self, event: &Event) -> Result<Next, GuestFault> {
        self.start_call();
        let handler = self.exports.shoal_plugin_handler();
        handler
            .call_handle(&mut self.store, event)
            .await
            .map_err(|e| fault(&e))
    }

    /// Step 3 of the lifecycle.
    pub(crate) async fn close(&mut self, reason: &CloseReason) -> Result<(), GuestFault> {
        self.start_call();
        let handler = self.exports.shoal_plugin_handler();
        handler
            .call_close(&mut self.store, reason)
            .await
            .map_err(|e| fault(&e))
    }

    /// Bytes the guest queued with `send` and the host has not written yet.
    pub(crate) fn output(&self) -> &[u8] {
        self.store.data().output()
    }

    pub(crate) fn clear_output(&mut self) {
        self.store.data_mut().clear_output();
    }

    pub(crate) fn mark_unwritable(&mut self) {
        self.store.data_mut().mark_unwritable();
    }
}
