//! What the host calls in a plugin: the handler of the world the plugin was built against
//! (`shoal:plugin@0.2.0`, or `@0.1.0` through [`legacy`]) and, when the plugin exports it,
//! `handoff`. Located once per plugin ([`PluginExports`]), loaded once per instance
//! ([`InstanceExports`]).

use wasmtime::AsContextMut;
use wasmtime::component::{Instance, InstancePre};

use crate::wasm::bindings::exported::{handler, handoff};
use crate::wasm::bindings::legacy;
use crate::wasm::bindings::plugin::types::{CloseReason, ConnInfo, Event, Next};
use crate::wasm::store::ConnState;

/// The name under which a current plugin exports its connection handler.
pub const HANDLER_EXPORT: &str = "shoal:plugin/handler@0.2.0";
/// The name of the optional `handoff` export.
pub const HANDOFF_EXPORT: &str = "shoal:plugin/handoff@0.2.0";

/// The version of the `shoal:plugin` world a plugin was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorldVersion {
    /// `shoal:plugin@0.1.0`: no `upgrade` close reason (it gets `shutdown`), no `handoff`.
    V0_1,
    /// `shoal:plugin@0.2.0`, the current one.
    V0_2,
}

impl WorldVersion {
    /// `0.1.0` or `0.2.0`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        }
    }
}

/// Where a plugin's exports are, found when it is linked.
#[derive(Clone)]
pub(crate) enum PluginExports {
    Legacy(legacy::HandlerIndices),
    Current {
        handler: handler::GuestIndices,
        handoff: Option<handoff::GuestIndices>,
    },
}

impl PluginExports {
    /// The exports of `pre`'s component: the 0.2.0 handler (with `handoff` if it has one)
    /// or else the 0.1.0 handler.
    pub(crate) fn new(pre: &InstancePre<ConnState>) -> wasmtime::Result<Self> {
        let component = pre.component();
        if component.get_export_index(None, HANDLER_EXPORT).is_none()
            && component
                .get_export_index(None, legacy::HANDLER_EXPORT)
                .is_some()
        {
            return Ok(Self::Legacy(legacy::HandlerIndices::new(pre)?));
        }
        let handoff = component
            .get_export_index(None, HANDOFF_EXPORT)
            .map(|_| handoff::GuestIndices::new(pre))
            .transpose()?;
        Ok(Self::Current {
            handler: handler::GuestIndices::new(pre)?,
            handoff,
        })
    }

    pub(crate) fn world(&self) -> WorldVersion {
        match self {
            Self::Legacy(_) => WorldVersion::V0_1,
            Self::Current { .. } => WorldVersion::V0_2,
        }
    }

    pub(crate) fn has_handoff(&self) -> bool {
        matches!(
            self,
            Self::Current {
                handoff: Some(_),
                ..
            }
        )
    }

    /// The functions of `instance`, type-checked.
    pub(crate) fn load(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        instance: &Instance,
    ) -> wasmtime::Result<InstanceExports> {
        Ok(match self {
            Self::Legacy(indices) => InstanceExports::Legacy(indices.load(store, instance)?),
            Self::Current { handler, handoff } => InstanceExports::Current {
                handler: handler.load(&mut store, instance)?,
                handoff: handoff
                    .as_ref()
                    .map(|handoff| handoff.load(&mut store, instance))
                    .transpose()?,
            },
        })
    }
}

/// One instance's exports.
pub(crate) enum InstanceExports {
    Legacy(legacy::Handler),
    Current {
        handler: handler::Guest,
        handoff: Option<handoff::Guest>,
    },
}

impl InstanceExports {
    pub(crate) async fn init(
        &self,
        store: impl AsContextMut<Data = ConnState>,
        info: &ConnInfo,
    ) -> wasmtime::Result<Result<Next, String>> {
        match self {
            Self::Legacy(handler) => handler.call_init(store, info).await,
            Self::Current { handler, .. } => handler.call_init(store, info).await,
        }
    }

    pub(crate) async fn handle(
        &self,
        store: impl AsContextMut<Data = ConnState>,
        event: &Event,
    ) -> wasmtime::Result<Next> {
        match self {
            Self::Legacy(handler) => handler.call_handle(store, event).await,
            Self::Current { handler, .. } => handler.call_handle(store, event).await,
        }
    }

    pub(crate) async fn close(
        &self,
        store: impl AsContextMut<Data = ConnState>,
        reason: &CloseReason,
    ) -> wasmtime::Result<()> {
        match self {
            Self::Legacy(handler) => handler.call_close(store, reason).await,
            Self::Current { handler, .. } => handler.call_close(store, reason).await,
        }
    }

    /// The `handoff` export, if the plugin has one.
    pub(crate) fn handoff(&self) -> Option<&handoff::Guest> {
        match self {
            Self::Legacy(_) => None,
            Self::Current { handoff, .. } => handoff.as_ref(),
        }
    }
}
