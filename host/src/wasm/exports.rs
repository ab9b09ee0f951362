//! What the host calls in a plugin: the handler of the world the plugin was built against
//! (`shoal:plugin@0.2.0`, or `@0.1.0` through [`legacy`]) and, when the plugin exports it,
//! `handoff`. Located once per plugin ([`PluginExports`]); an instance's handler functions
//! are looked up when the instance is made ([`Handler`]), its `handoff` only when a swap
//! calls it.
//!
//! The handler's types are checked once per plugin, on its first instance: types belong to
//! the component, so every later instance of it has the same. (wasmtime's generated
//! bindings check them on every instance: walking the records and variants and comparing
//! their field names as strings cost each connection ~0.7 µs, issue 16.)

use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Func, Instance, InstancePre, Lift, Lower, TypedFunc,
};
use wasmtime::{AsContext, AsContextMut};

use crate::wasm::bindings::exported::handoff;
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

    /// The name of the handler interface the world exports.
    fn handler_export(self) -> &'static str {
        match self {
            Self::V0_1 => legacy::HANDLER_EXPORT,
            Self::V0_2 => HANDLER_EXPORT,
        }
    }
}

/// Where a plugin's exports are, found when it is linked.
pub(crate) struct PluginExports {
    world: WorldVersion,
    handler: HandlerIndices,
    handoff: Option<handoff::GuestIndices>,
    /// Whether an instance's handler functions passed the type check (then every instance's
    /// do: they are the same component's).
    checked: AtomicBool,
}

impl PluginExports {
    /// The exports of `pre`'s component: the 0.2.0 handler (with `handoff` if it has one)
    /// or else the 0.1.0 handler.
    pub(crate) fn new(pre: &InstancePre<ConnState>) -> wasmtime::Result<Self> {
        let component = pre.component();
        let world = if component.get_export_index(None, HANDLER_EXPORT).is_none()
            && component
                .get_export_index(None, legacy::HANDLER_EXPORT)
                .is_some()
        {
            WorldVersion::V0_1
        } else {
            WorldVersion::V0_2
        };
        let handoff = match world {
            WorldVersion::V0_1 => None,
            WorldVersion::V0_2 => component
                .get_export_index(None, HANDOFF_EXPORT)
                .map(|_| handoff::GuestIndices::new(pre))
                .transpose()?,
        };
        Ok(Self {
            world,
            handler: HandlerIndices::new(pre, world.handler_export())?,
            handoff,
            checked: AtomicBool::new(false),
        })
    }

    pub(crate) fn world(&self) -> WorldVersion {
        self.world
    }

    pub(crate) fn has_handoff(&self) -> bool {
        self.handoff.is_some()
    }

    /// The handler functions of `instance`, an instance of this plugin; their types (and
    /// `handoff`'s) are checked unless an instance before passed the check.
    pub(crate) fn load(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        instance: &Instance,
    ) -> wasmtime::Result<Handler> {
        let mut store = store.as_context_mut();
        let name = self.world.handler_export();
        let mut func = |index, function: &str| {
            instance
                .get_func(&mut store, index)
                .ok_or_else(|| wasmtime::format_err!("`{name}` has no function `{function}`"))
        };
        let handler = Handler {
            world: self.world,
            init: func(&self.handler.init, "init")?,
            handle: func(&self.handler.handle, "handle")?,
            close: func(&self.handler.close, "close")?,
        };
        if !self.checked.load(Ordering::Acquire) {
            handler.check(&store)?;
            // `handoff`'s types too, so that a plugin whose `handoff` has others fails here
            // (its probe), not at its first swap.
            self.load_handoff(&mut store, instance)?;
            self.checked.store(true, Ordering::Release);
        }
        Ok(handler)
    }

    /// The `handoff` functions of `instance`, an instance of this plugin, type-checked; `None`
    /// when the plugin does not export `handoff`.
    pub(crate) fn load_handoff(
        &self,
        store: impl AsContextMut<Data = ConnState>,
        instance: &Instance,
    ) -> wasmtime::Result<Option<handoff::Guest>> {
        self.handoff
            .as_ref()
            .map(|indices| indices.load(store, instance))
            .transpose()
    }
}

/// Where a component's handler functions are, found once per plugin.
struct HandlerIndices {
    init: ComponentExportIndex,
    handle: ComponentExportIndex,
    close: ComponentExportIndex,
}

impl HandlerIndices {
    /// Find the functions of the handler interface `name` in `pre`'s component (their types
    /// are checked on the first instance, [`PluginExports::load`]).
    fn new(pre: &InstancePre<ConnState>, name: &str) -> wasmtime::Result<Self> {
        let component = pre.component();
        let interface = component
            .get_export_index(None, name)
            .ok_or_else(|| wasmtime::format_err!("no exported instance named `{name}`"))?;
        let lookup = |function: &str| {
            component
                .get_export_index(Some(&interface), function)
                .ok_or_else(|| wasmtime::format_err!("`{name}` does not export `{function}`"))
        };
        Ok(Self {
            init: lookup("init")?,
            handle: lookup("handle")?,
            close: lookup("close")?,
        })
    }
}

type InitParams<'a> = (&'a ConnInfo,);
type InitResults = (Result<Next, String>,);
type HandleParams<'a> = (&'a Event,);
type HandleResults = (Next,);
type CloseParams<'a> = (&'a CloseReason,);
type LegacyCloseParams<'a> = (&'a legacy::CloseReason,);
type CloseResults = ();

/// One instance's handler functions (of either world), made by [`PluginExports::load`].
pub(crate) struct Handler {
    world: WorldVersion,
    init: Func,
    handle: Func,
    close: Func,
}

impl Handler {
    /// Check the three functions against the `*Params`/`*Results` aliases the calls use.
    fn check(&self, store: impl AsContext) -> wasmtime::Result<()> {
        let store = store.as_context();
        self.init.typed::<InitParams<'_>, InitResults>(&store)?;
        self.handle
            .typed::<HandleParams<'_>, HandleResults>(&store)?;
        match self.world {
            WorldVersion::V0_1 => self
                .close
                .typed::<LegacyCloseParams<'_>, CloseResults>(&store)
                .map(drop),
            WorldVersion::V0_2 => self
                .close
                .typed::<CloseParams<'_>, CloseResults>(&store)
                .map(drop),
        }
    }

    pub(crate) async fn init(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        info: &ConnInfo,
    ) -> wasmtime::Result<Result<Next, String>> {
        // SAFETY: `init` was checked against these aliases (`Handler::typed`).
        #[allow(unsafe_code)]
        let func = unsafe { Self::typed::<InitParams<'_>, InitResults>(self.init) };
        Ok(func.call_async(&mut store, (info,)).await?.0)
    }

    pub(crate) async fn handle(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        event: &Event,
    ) -> wasmtime::Result<Next> {
        // SAFETY: `handle` was checked against these aliases (`Handler::typed`).
        #[allow(unsafe_code)]
        let func = unsafe { Self::typed::<HandleParams<'_>, HandleResults>(self.handle) };
        Ok(func.call_async(&mut store, (event,)).await?.0)
    }

    pub(crate) async fn close(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        reason: &CloseReason,
    ) -> wasmtime::Result<()> {
        match self.world {
            WorldVersion::V0_1 => {
                let reason = legacy::CloseReason::from(reason);
                // SAFETY: a 0.1.0 `close` was checked against these aliases
                // (`Handler::typed`).
                #[allow(unsafe_code)]
                let func =
                    unsafe { Self::typed::<LegacyCloseParams<'_>, CloseResults>(self.close) };
                func.call_async(&mut store, (&reason,)).await
            }
            WorldVersion::V0_2 => {
                // SAFETY: a 0.2.0 `close` was checked against these aliases
                // (`Handler::typed`).
                #[allow(unsafe_code)]
                let func = unsafe { Self::typed::<CloseParams<'_>, CloseResults>(self.close) };
                func.call_async(&mut store, (reason,)).await
            }
        }
    }

    /// `func` as a typed function without checking its type again (`Func::typed` walks the
    /// parameter and result types and compares record and variant names as strings).
    ///
    /// # Safety
    ///
    /// `func` must have the type `Func::typed::<P, R>` checks. A `Handler` is made only by
    /// [`PluginExports::load`], from the functions of an instance of its plugin; it runs
    /// [`Handler::check`] (`init`, `handle` and `close` against the aliases the three calls
    /// use, `close`'s by world) unless an instance of the same plugin passed it before — and
    /// the types of a component's exports are the same in all its instances.
    #[allow(unsafe_code)]
    unsafe fn typed<P, R>(func: Func) -> TypedFunc<P, R>
    where
        P: ComponentNamedList + Lower,
        R: ComponentNamedList + Lift,
    {
        // SAFETY: the caller's promise above.
        unsafe { TypedFunc::new_unchecked(func) }
    }
}
