//! Plugins built against `shoal:plugin@0.1.0`: what they import is linked to the same host
//! functions as 0.2.0's, and their three exports are called through 0.2.0's Rust types,
//! which have the same shape — except `close-reason`, which gained `upgrade` in 0.2.0 and is
//! [`CloseReason`] here (an `upgrade` reaches them as `shutdown`).
//!
//! wasmtime type-checks component values by shape, not by name, so the 0.2.0 types lower
//! into 0.1.0's exactly. The shapes are checked when an instance's functions are loaded
//! ([`HandlerIndices::load`]): a component whose 0.1.0 exports have others fails its first
//! instance — the check a listener runs before it serves, or a swap's probe.

use wasmtime::AsContextMut;
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, ComponentType, Func, Instance, InstancePre, Lift,
    Linker, Lower, TypedFunc,
};

use crate::wasm::bindings::plugin::types::{
    CloseReason as CurrentCloseReason, ConnInfo, Event, Next,
};
use crate::wasm::bindings::plugin::{config, connection, log, mailbox};
use crate::wasm::store::ConnState;

/// The 0.1.0 handler interface's export name.
pub(crate) const HANDLER_EXPORT: &str = "shoal:plugin/handler@0.1.0";

/// `close-reason` as 0.1.0 defines it.
#[derive(ComponentType, Lower, Clone, Debug)]
#[component(variant)]
pub(crate) enum CloseReason {
    #[component(name = "peer-closed")]
    PeerClosed,
    #[component(name = "guest-closed")]
    GuestClosed,
    #[component(name = "idle-timeout")]
    IdleTimeout,
    #[component(name = "shutdown")]
    Shutdown,
    #[component(name = "limit")]
    Limit(String),
    #[component(name = "error")]
    Error(String),
}

impl From<&CurrentCloseReason> for CloseReason {
    fn from(reason: &CurrentCloseReason) -> Self {
        match reason {
            CurrentCloseReason::PeerClosed => Self::PeerClosed,
            CurrentCloseReason::GuestClosed => Self::GuestClosed,
            CurrentCloseReason::IdleTimeout => Self::IdleTimeout,
            // 0.1.0 has no `upgrade`: the nearest it knows is the server going away.
            CurrentCloseReason::Shutdown | CurrentCloseReason::Upgrade => Self::Shutdown,
            CurrentCloseReason::Limit(text) => Self::Limit(text.clone()),
            CurrentCloseReason::Error(text) => Self::Error(text.clone()),
        }
    }
}

/// Link the 0.1.0 imports to the host functions that serve 0.2.0's.
pub(crate) fn add_to_linker(linker: &mut Linker<ConnState>) -> wasmtime::Result<()> {
    // Types only; defined so that a component that imports the interface finds it.
    linker.instance("shoal:plugin/types@0.1.0")?;

    let mut instance = linker.instance("shoal:plugin/connection@0.1.0")?;
    instance.func_wrap("send", |mut store, (data,): (Vec<u8>,)| {
        Ok((connection::Host::send(store.data_mut(), data),))
    })?;

    let mut instance = linker.instance("shoal:plugin/mailbox@0.1.0")?;
    instance.func_wrap_async("send", |mut store, (to, payload): (u64, Vec<u8>)| {
        Box::new(async move { Ok((mailbox::Host::send(store.data_mut(), to, payload).await,)) })
    })?;
    instance.func_wrap_async("broadcast", |mut store, (payload,): (Vec<u8>,)| {
        Box::new(async move { Ok((mailbox::Host::broadcast(store.data_mut(), payload).await,)) })
    })?;
    instance.func_wrap("peers", |mut store, (): ()| {
        Ok((mailbox::Host::peers(store.data_mut()),))
    })?;
    instance.func_wrap("set-name", |mut store, (name,): (String,)| {
        mailbox::Host::set_name(store.data_mut(), name);
        Ok(())
    })?;
    instance.func_wrap("claim-name", |mut store, (name,): (String,)| {
        Ok((mailbox::Host::claim_name(store.data_mut(), name),))
    })?;

    let mut instance = linker.instance("shoal:plugin/config@0.1.0")?;
    instance.func_wrap("get", |mut store, (key,): (String,)| {
        Ok((config::Host::get(store.data_mut(), key),))
    })?;
    instance.func_wrap("entries", |mut store, (): ()| {
        Ok((config::Host::entries(store.data_mut()),))
    })?;

    let mut instance = linker.instance("shoal:plugin/log@0.1.0")?;
    instance.func_wrap("log", |mut store, (level, message)| {
        log::Host::log(store.data_mut(), level, message);
        Ok(())
    })?;
    Ok(())
}

/// Where a 0.1.0 component's handler functions are, found once per plugin.
#[derive(Clone)]
pub(crate) struct HandlerIndices {
    init: ComponentExportIndex,
    handle: ComponentExportIndex,
    close: ComponentExportIndex,
}

impl HandlerIndices {
    /// Find the handler's functions in `pre`'s component (their types are checked by
    /// [`HandlerIndices::load`]).
    pub(crate) fn new(pre: &InstancePre<ConnState>) -> wasmtime::Result<Self> {
        let component = pre.component();
        let interface = component
            .get_export_index(None, HANDLER_EXPORT)
            .ok_or_else(|| {
                wasmtime::format_err!("no exported instance named `{HANDLER_EXPORT}`")
            })?;
        let lookup = |name: &str| {
            component
                .get_export_index(Some(&interface), name)
                .ok_or_else(|| wasmtime::format_err!("`{HANDLER_EXPORT}` does not export `{name}`"))
        };
        Ok(Self {
            init: lookup("init")?,
            handle: lookup("handle")?,
            close: lookup("close")?,
        })
    }

    /// The functions of `instance`, type-checked against the shapes the host calls them with.
    pub(crate) fn load(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        instance: &Instance,
    ) -> wasmtime::Result<Handler> {
        let mut store = store.as_context_mut();
        let func = |store: &mut wasmtime::StoreContextMut<'_, ConnState>, index, name: &str| {
            instance
                .get_func(&mut *store, index)
                .ok_or_else(|| wasmtime::format_err!("`{HANDLER_EXPORT}` has no function `{name}`"))
        };
        let handler = Handler {
            init: func(&mut store, &self.init, "init")?,
            handle: func(&mut store, &self.handle, "handle")?,
            close: func(&mut store, &self.close, "close")?,
        };
        // The checks the calls rely on (`Handler::typed`).
        handler.init.typed::<InitParams<'_>, InitResults>(&store)?;
        handler
            .handle
            .typed::<HandleParams<'_>, HandleResults>(&store)?;
        handler
            .close
            .typed::<CloseParams<'_>, CloseResults>(&store)?;
        Ok(handler)
    }
}

type InitParams<'a> = (&'a ConnInfo,);
type InitResults = (Result<Next, String>,);
type HandleParams<'a> = (&'a Event,);
type HandleResults = (Next,);
type CloseParams<'a> = (&'a CloseReason,);
type CloseResults = ();

/// A 0.1.0 instance's handler functions, type-checked once by [`HandlerIndices::load`].
pub(crate) struct Handler {
    init: Func,
    handle: Func,
    close: Func,
}

impl Handler {
    pub(crate) async fn call_init(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        info: &ConnInfo,
    ) -> wasmtime::Result<Result<Next, String>> {
        // SAFETY: `load` checked `init` against these aliases.
        #[allow(unsafe_code)]
        let func = unsafe { Self::typed::<InitParams<'_>, InitResults>(self.init) };
        Ok(func.call_async(&mut store, (info,)).await?.0)
    }

    pub(crate) async fn call_handle(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        event: &Event,
    ) -> wasmtime::Result<Next> {
        // SAFETY: `load` checked `handle` against these aliases.
        #[allow(unsafe_code)]
        let func = unsafe { Self::typed::<HandleParams<'_>, HandleResults>(self.handle) };
        Ok(func.call_async(&mut store, (event,)).await?.0)
    }

    pub(crate) async fn call_close(
        &self,
        mut store: impl AsContextMut<Data = ConnState>,
        reason: &CurrentCloseReason,
    ) -> wasmtime::Result<()> {
        let reason = CloseReason::from(reason);
        // SAFETY: `load` checked `close` against these aliases.
        #[allow(unsafe_code)]
        let func = unsafe { Self::typed::<CloseParams<'_>, CloseResults>(self.close) };
        func.call_async(&mut store, (&reason,)).await
    }

    /// `func` as a typed function without checking its type again: `Func::typed` walks the
    /// parameter and result types and compares record and variant names as strings, which
    /// cost every call when done per call (issue 16). What wasmtime's generated bindings do
    /// after their own check once per instance.
    ///
    /// # Safety
    ///
    /// `func` must have passed `Func::typed::<P, R>`: `HandlerIndices::load` checks `init`,
    /// `handle` and `close` against the `*Params`/`*Results` aliases the three callers use,
    /// and a `Handler` is made nowhere else.
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
