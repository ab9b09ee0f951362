//! The Wasm side: the engine, plugins loaded in steps with a compile cache, one instance per
//! connection, the host's imports, the limits that stop a guest, the guest's log and what it
//! is granted.

pub(crate) mod bindings;
pub(crate) mod cache;
pub(crate) mod capabilities;
pub(crate) mod cpu;
pub(crate) mod digest;
pub(crate) mod exports;
pub(crate) mod guest_log;
pub(crate) mod imports;
pub(crate) mod instance;
pub(crate) mod limits;
pub(crate) mod plugin;
pub(crate) mod runtime;
pub(crate) mod shape;
pub(crate) mod store;
pub(crate) mod tick_clock;
