//! The host side of the plugin's imports, one file per WIT interface, and the one
//! [`Linker`] per engine that every plugin is linked with.

mod config;
mod connection;
mod log;
mod mailbox;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::wasm::bindings::PluginHandoff as PluginWorld;
use crate::wasm::bindings::legacy;
use crate::wasm::bindings::plugin::types;
use crate::wasm::store::ConnState;

impl types::Host for ConnState {}

/// A linker with every import a plugin may use: the `shoal:plugin` interfaces (of 0.2.0 and
/// of 0.1.0) and WASI 0.2
/// (what WASI can reach is decided per store, from the listener's grants).
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<ConnState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    PluginWorld::add_to_linker::<ConnState, HasSelf<ConnState>>(&mut linker, |state| state)?;
    connection::define_send_from_guest_memory(&mut linker)?;
    legacy::add_to_linker(&mut linker)?;
    Ok(linker)
}
