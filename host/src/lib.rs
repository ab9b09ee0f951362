//! shoal: a TCP server that runs every connection in its own sandboxed WebAssembly component.
//!
//! A [`Server`] accepts connections on a listener with a supervised pool of acceptor tasks and
//! hands each one to a fresh instance of a [`Plugin`]: a component implementing the
//! `shoal:plugin` world (`wit/plugin.wit`). The plugin's exports `init`, `handle` and `close`
//! run the connection; per-connection state lives in the instance, so a trap, a loop or a
//! memory bomb costs only that connection.
//!
//! ```no_run
//! use shoal_host::{Plugin, Runtime, RuntimeConfig};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let plugin = Plugin::from_file(&runtime, "target/plugins/echo.wasm")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! shoal_host::serve(listener, plugin, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Lifecycle of a connection
//!
//! 1. `init(conn-info)` runs once when the connection is accepted; the socket is open.
//!    `ok(continue)` keeps it, `ok(close)` flushes and closes, `err` refuses it (no `close`).
//! 2. `handle(event)` runs for every chunk read from the socket, in order, and for every
//!    message from another connection of the listener ([`mailbox`]), never two at once.
//! 3. `close(reason)` runs exactly once when a connection whose `init` succeeded ends, unless a
//!    call faulted (trap, CPU budget, call timeout, memory limit) or the shutdown deadline
//!    passed first; what it sends is flushed while the client can still receive it.
//!
//! Bytes the guest `send`s are written after each call returns. Native code can watch
//! connections open and close and message them ([`Server::on_open`], [`Server::on_close`],
//! [`Server::mailboxes`]; the [`hooks`] module has glisten's connection-manager example), and
//! one process can serve several listeners, each with its own plugin, limits and
//! [`Capabilities`] ([`config_file`]).
//!
//! # Layout
//!
//! * [`runtime`]: the shared wasmtime engine, pooling allocator and epoch ticker.
//! * [`plugin`]: loading, checking and pre-linking a component.
//! * [`config`]: per-listener settings and their defaults.
//! * [`server`]: the entry point — serve a bound listener until a shutdown future resolves.
//! * `acceptor`: the supervised acceptor pool and accept-error classification.
//! * `connection`: one connection's task, from `init` to `close`, generic over its handler.
//! * [`capabilities`]: what a listener's guests are granted (environment, config values, a
//!   read-only directory); nothing by default.
//! * [`config_file`]: `shoal.toml`, several listeners with their plugins, limits and grants.
//! * [`handler`]: the handler abstraction — a Wasm plugin instance or native code.
//! * [`native`]: native handlers (the echo baseline the benchmarks compare against).
//! * [`instance`]: one plugin instance, its store and the per-call CPU budget; drivable by
//!   hand without a socket.
//! * `guest`: the store's state and the host side of the plugin's imports.
//! * `guest_log`: guest log lines and stdio, rate-limited, into `tracing`.
//! * [`mailbox`]: messages between the connections of one listener: registry and mailboxes.
//! * [`hooks`]: embedder callbacks on connection open and close, with a handle to message it.
//! * `read_buffers`: read buffers lent per read, so an idle connection holds none.
//! * [`stats`]: live counters.
//! * [`tcp`]: the low-level listen/accept/receive API.
//! * [`error`]: typed errors.

mod acceptor;
mod bindings;
pub mod capabilities;
pub mod config;
pub mod config_file;
mod connection;
pub mod error;
mod guest;
mod guest_log;
pub mod handler;
pub mod hooks;
pub mod instance;
pub mod mailbox;
pub mod native;
pub mod plugin;
mod read_buffers;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod tcp;

pub use bindings::shoal::plugin::types::{CloseReason, ConnInfo, Envelope, Event, Next};
pub use capabilities::Capabilities;
pub use config::{ServerConfig, ServerConfigBuilder};
pub use error::{ConfigError, GuestFault, InstantiateError, PluginError, RuntimeError, ServeError};
pub use handler::{ConnectionHandler, HandlerFactory, NewConnection};
pub use hooks::ConnectionHandle;
pub use instance::Instance;
pub use mailbox::{Mailboxes, MessageError};
pub use plugin::{HANDLER_EXPORT, Plugin};
pub use runtime::{Runtime, RuntimeConfig, RuntimeConfigBuilder};
pub use server::{Server, serve};
pub use stats::{Limit, Stats};
