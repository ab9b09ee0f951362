//! Plugins built against `shoal:plugin@0.1.0`: what they import is linked to the same host
//! functions as 0.2.0's, and their three exports are called through 0.2.0's Rust types,
//! which have the same shape — except `close-reason`, which gained `upgrade` in 0.2.0 and is
//! [`CloseReason`] here (an `upgrade` reaches them as `shutdown`).
//!
//! wasmtime type-checks component values by shape, not by name, so the 0.2.0 types lower
//! into 0.1.0's exactly. The shapes are checked when a plugin's first instance is loaded
//! (`wasm::exports`): a component whose 0.1.0 exports have others fails its first instance —
//! the check a listener runs before it serves, or a swap's probe.

use wasmtime::component::{ComponentType, Linker, Lower};

use crate::wasm::bindings::plugin::types::CloseReason as CurrentCloseReason;
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
