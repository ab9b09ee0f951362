//! shoal: a TCP server that runs every connection in its own sandboxed WebAssembly component.
//!
//! A [`Node`] holds the Wasm engine and every listener of a process. Each listener is a
//! [`Server`]: a supervised pool of acceptor tasks that hands every accepted connection to a
//! fresh instance of a [`Plugin`], a component implementing the `shoal:plugin` world. The
//! plugin's exports `init`, `handle` and `close` run the connection — the lifecycle, and every
//! guarantee about it, is specified once, in `wit/plugin.wit` — and per-connection state
//! lives in the instance, so a trap, a loop or a memory bomb costs only that connection.
//!
//! ```no_run
//! use shoal_host::{ListenerSpec, Node, NodeSpec, PluginSource, ServerConfig};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let spec = NodeSpec {
//!     listeners: vec![ListenerSpec {
//!         address: "127.0.0.1:8080".parse()?,
//!         plugin: PluginSource::File("target/plugins/echo.wasm".into()),
//!         config: ServerConfig::builder().name("echo").build()?,
//!     }],
//!     cache_dir: shoal_host::default_cache_dir(),
//!     ..NodeSpec::default()
//! };
//! Node::from_spec(spec)?
//!     .serve(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! One listener can also be served on its own ([`Server::serve`], [`serve`]); native code can
//! watch connections open and close and message them ([`Server::on_open`],
//! [`Server::on_close`], [`Mailboxes`]); a plugin can be driven without a socket
//! ([`Instance`]); any stream can be served as a connection ([`serve_stream`] over a
//! [`Transport`]); and [`tcp`] is the low-level listen/accept/receive API.
//!
//! # Layout
//!
//! Every module is private; each public type is public once, at the crate root (or in
//! [`tcp`] and [`native`]).
//!
//! * `node`: [`Node`], the engine and every listener of a process; sizing the instance pool.
//! * `conn_id`: connection ids, one counter per process.
//! * `handler`: [`HandlerFactory`] and [`ConnectionHandler`], what serves a connection — a
//!   Wasm instance or native code.
//! * `native`: native handlers (the echo baseline of the benchmarks).
//! * `error`: typed errors.
//! * `buffers`: byte buffers lent per thread — for a read and the call it feeds, and for a
//!   call's output until it is written — so that an idle connection holds none.
//! * `server/` — the server side:
//!   * `listener`: [`Server`], one listener served until shutdown and drained;
//!   * `acceptor`: the supervised acceptor pool and accept-error classification;
//!   * `connection`: one connection's task, from `init` to `close`, over any transport;
//!   * `ending`: why a connection ended, counted, logged, and turned into the WIT
//!     `close-reason` at the guest edge;
//!   * `io`: reads into lent buffers, writes with a deadline, the lingering close;
//!   * `transport`: [`Transport`], what the connection task needs of a stream (TCP now);
//!   * `hooks`: embedder callbacks on open and close, and [`ConnectionHandle`];
//!   * `tcp`: the low-level API.
//! * `wasm/` — the Wasm side:
//!   * `runtime`: [`Runtime`], the engine, its instance pool, epoch ticker and linker;
//!   * `plugin`: [`Plugin`], loaded in steps (read, compile or cache, check, link);
//!   * `cache`: the compile cache on disk, and why its entries are trusted;
//!   * `digest`: [`ContentHash`], a plugin file's SHA-256;
//!   * `instance`: [`Instance`], one store and the three exports, as a handler;
//!   * `store`: what a store carries (output queue, WASI context, budget, log);
//!   * `imports/`: the host side of each imported interface (`connection`, `mailbox`,
//!     `config`, `log`) and the linker that holds them;
//!   * `limits`: the memory cap, the CPU budget per call and the call timeout;
//!   * `cpu`: the tick clock that measures guests' CPU, and the fair share of the cores
//!     between listeners ([`CpuGroup`]);
//!   * `guest_log`: guest log lines and stdio into `tracing`, rate-limited;
//!   * `capabilities`: [`Capabilities`], what a listener's guests are granted;
//!   * `bindings`: the Rust side of `wit/plugin.wit`, generated.
//! * `messages/` — messages between connections:
//!   * `types`: the API every backend speaks ([`Message`], [`MessageError`], …);
//!   * `local`: [`Mailboxes`], the in-process registry and bounded mailboxes.
//! * `config/` — settings:
//!   * `listener`: [`ServerConfig`] and its builder, with the defaults;
//!   * `spec`: [`NodeSpec`], what a node is built from;
//!   * `file`: `shoal.toml`, read into a [`NodeSpec`];
//!   * `units`: durations and sizes as a person writes them.
//! * `versions` — a listener's plugin versions ([`Versions`]): the current one, the older
//!   ones still serving, and the swap that replaces the current one after a probe.
//! * `node_handle` — [`NodeHandle`]: swaps and config reloads while a node serves.
//! * `watch` — plugin files watched for changes, settled, then swapped in.
//! * `observe/` — what an operator sees:
//!   * `stats`: [`Stats`], live counters and every connection by how it ended.

mod admin;
mod buffers;
mod config;
mod conn_id;
mod error;
mod handler;
mod messages;
pub mod native;
mod node;
mod node_handle;
mod observe;
mod server;
mod tls;
mod versions;
mod wasm;
mod watch;

/// The low-level API, for embedders who manage connections themselves: listen, accept and
/// receive on one socket without the acceptor pool, and run a plugin on a socket of their own.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let listener = shoal_host::tcp::listen("127.0.0.1:8000").await?;
/// let mut socket = listener.accept().await?;
/// let message = socket.receive(0).await?;
/// println!("got a message: {message:?}");
/// # Ok(())
/// # }
/// ```
pub mod tcp {
    pub use crate::server::tcp::{Listener, Socket, listen};
}

pub use admin::changes::AdminToken;
pub use admin::serve_admin;
pub use config::file::{ConfigFileError, LogFormat, admin_address, admin_exposure};
pub use config::listener::{HandoffPolicy, ServerConfig, ServerConfigBuilder, bounds};
pub use config::spec::{AdminSpec, ListenerSpec, NodeSpec, PluginSource};
pub use config::units::parse_duration;
pub use error::{
    ConfigError, GuestFault, InstantiateError, NodeError, PluginError, RuntimeError, ServeError,
    SwapError,
};
pub use handler::{
    ConnectionHandler, HandlerFactory, HandoffOutcome, NewConnection, SleepOutcome, WakeOutcome,
};
pub use messages::local::Mailboxes;
pub use messages::types::{
    FROM_HOST, MAX_NAME_BYTES, MailboxCounts, MailboxLimits, Message, MessageError, NameError, Peer,
};
pub use node::{Node, NodeListener};
pub use node_handle::{ListenerStatus, NodeHandle};
pub use observe::stats::{EndKind, Incident, Limit, Stats};
pub use server::connection::serve_stream;
pub use server::hooks::ConnectionHandle;
pub use server::listener::{Server, serve};
pub use server::transport::Transport;
pub use tls::settings::{DEFAULT_HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT, Tls, TlsError, TlsFiles};
pub use versions::{VersionInfo, VersionedInstance, Versions};
pub use wasm::bindings::plugin::types::{CloseReason, ConnInfo, Envelope, Event, Next, TlsInfo};
pub use wasm::cache::default_cache_dir;
pub use wasm::capabilities::{Capabilities, ReadOnlyDir};
pub use wasm::cpu::CpuGroup;
pub use wasm::digest::ContentHash;
pub use wasm::exports::{HANDLER_EXPORT, HANDOFF_EXPORT, WorldVersion};
pub use wasm::instance::Instance;
pub use wasm::plugin::{Compilation, LoadReport, Plugin};
pub use wasm::runtime::{MemoryInit, Runtime, RuntimeConfig, RuntimeConfigBuilder};
pub use watch::{PluginWatch, SETTLE};
