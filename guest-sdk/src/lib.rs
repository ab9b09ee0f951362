//! Write [shoal](https://example.invalid/shoal) connection handlers in Rust.
//!
//! A shoal plugin is a Wasm component that handles one TCP connection: the host runs a fresh
//! instance of it for every connection it accepts. This crate is a thin layer over the
//! bindings `wit-bindgen` generates for the `shoal:plugin` world: implement [`Handler`] on the
//! type that holds your per-connection state and name it in [`export_handler!`].
//!
//! ```no_run
//! use shoal_guest::{ConnInfo, Event, Handler, Next};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
//!         Ok((Echo, Next::Continue))
//!     }
//!
//!     fn handle(&mut self, event: Event) -> Next {
//!         if let Event::Data(bytes) = event {
//!             let _ = shoal_guest::send(&bytes);
//!         }
//!         Next::Continue
//!     }
//! }
//!
//! shoal_guest::export_handler!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` file cargo writes
//! is the component `shoal serve` loads. A plugin that uses no WASI can instead be built for
//! `wasm32-unknown-unknown` and made a component with `tools/componentize`: it then imports
//! only `shoal:plugin` and instantiates faster.
//!
//! On `wasm32-unknown-unknown` the default `heap` feature gives the plugin Rust's usual
//! allocator (dlmalloc) fed first from the unused end of the initial linear memory, so that
//! serving a connection does not grow the memory (each growth costs the host a page fault and
//! two `mprotect` calls per connection). Link with an initial memory that leaves 64 KiB free
//! past the stack and the data segments, e.g. `-C link-arg=--initial-memory=196608` with a
//! stack of tens of KiB; turn the feature off to use a `#[global_allocator]` of your own.
//! shoal's `plugins/.cargo/config.toml` gives its plugins a 57 KiB stack
//! (`-C link-arg=-zstack-size=58368`): the data sits right above the stack's top, and a top
//! in the middle of a page puts the live frames, a small plugin's data and the heap's first
//! blocks in one 4 KiB page, one page fewer for each connection to touch and reset.
//!
//! Link such a plugin with `-C link-arg=--import-memory` too: its core module then imports
//! its linear memory, the component defines it in a module of its own, and the guest's calls
//! to [`send`] and [`log`] reach the host directly rather than through an indirect call in a
//! shim module (which would otherwise exist only because the memory those imports need is
//! defined by the very module that imports them).
//!
//! # Lifecycle
//!
//! The lifecycle of a connection — when each step runs, what [`Next::Close`] and an `Err`
//! from `init` do, when `close` is not called, when output is written — is specified once,
//! in the `handler` interface of the `shoal:plugin` world (`wit/plugin.wit` in shoal's
//! repository). The three methods of [`Handler`] are its three steps; messages to other
//! connections go through [`mailbox`].

// Single-threaded instances only: with the atomics feature std's own allocator stays.
#[cfg(all(
    feature = "heap",
    target_arch = "wasm32",
    target_os = "unknown",
    not(target_feature = "atomics")
))]
mod heap;

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "shoal_guest::bindings",
    });

    // With `shoal:plugin@0.1.0` beside it in `wit/deps`, the modules carry the version.
    pub use self::exports::shoal::plugin0_2_0 as exported;
    pub use self::shoal::plugin0_2_0 as plugin;
}

/// The `handoff` export, which makes a `plugin` a `plugin-handoff`.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod handoff_bindings {
    wit_bindgen::generate!({
        world: "handoff-export",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_handoff",
        default_bindings_module: "shoal_guest::handoff_bindings",
        with: { "shoal:plugin/types@0.2.0": crate::bindings::plugin::types },
    });

    pub use self::exports::shoal::plugin0_2_0 as exported;
}

pub use bindings::plugin::types::{
    CloseReason, ConnInfo, Envelope, Event, Level, MessageError, NameError, Next, Peer, SendError,
    TlsInfo,
};

/// A connection handler: one value of this type is the state of one connection.
///
/// Its methods are the three steps of the lifecycle that `wit/plugin.wit` specifies (see the
/// [crate docs](crate#lifecycle)).
pub trait Handler: Sized + 'static {
    /// Step 1: a connection was accepted. Returns the connection's state and what to do next,
    /// or a reason to refuse the connection.
    ///
    /// # Errors
    ///
    /// An `Err` closes the connection without output; the host logs the text.
    fn init(info: ConnInfo) -> Result<(Self, Next), String>;

    /// Step 2: bytes from the client or a message from another connection.
    fn handle(&mut self, event: Event) -> Next;

    /// Step 3: the connection ended. The default does nothing.
    fn close(self, reason: CloseReason) {
        let _ = reason;
    }
}

/// A handler whose connections can move to a newer version of the plugin without closing
/// (the `handoff` interface of `wit/plugin.wit`): export it with
/// `export_handler!(MyType, handoff)`.
///
/// When the listener swaps to a new version, the host calls [`Handoff::snapshot`] on the old
/// version's state between two events, then [`Handoff::resume`] in a fresh instance of the new
/// version instead of [`Handler::init`]. The encoding of the state is the plugin's choice (a
/// few bytes by hand, `postcard`, …); a new version should read its predecessors' snapshots,
/// and refuse (`Err`) one it cannot read: the connection then stays on its old version.
pub trait Handoff: Handler {
    /// The connection's state as bytes. The state stays in place: if the new version refuses
    /// it, this connection goes on here.
    fn snapshot(&self) -> Vec<u8>;

    /// Take over a live connection from an older version's [`Handoff::snapshot`], for the
    /// client connected as `info` (the same as `init` was given).
    ///
    /// # Errors
    ///
    /// An `Err` refuses the connection, which stays on its old version; the host logs the
    /// text.
    fn resume(info: ConnInfo, state: &[u8]) -> Result<(Self, Next), String>;
}

/// Queue bytes for this connection's client; they are written when the current call returns.
///
/// # Errors
///
/// [`SendError::BufferFull`] when the listener's output buffer limit would be passed (nothing
/// was queued), [`SendError::Closed`] when the client can no longer receive.
pub fn send(data: &[u8]) -> Result<(), SendError> {
    bindings::plugin::connection::send(data)
}

/// This connection's TLS session (protocol version, cipher suite, SNI server name, ALPN
/// protocol, the client certificate's subject under mutual TLS), or `None` when its listener
/// serves plain TCP. The handshake is over before `init`, so the answer never changes.
///
/// A plugin that calls this needs a host that provides `connection.tls` (shoal with TLS
/// support); one that does not call it loads on any host of its world.
#[must_use]
pub fn tls() -> Option<TlsInfo> {
    bindings::plugin::connection::tls()
}

/// Messages to the other connections of this listener; they arrive there as
/// [`Event::Message`]. See `wit/plugin.wit` (`interface mailbox`) for the delivery guarantees:
/// FIFO per sender and receiver, nothing waits, a full mailbox refuses.
pub mod mailbox {
    use crate::bindings::plugin::mailbox as imports;
    use crate::{MessageError, NameError, Peer};

    /// Send `payload` to connection `to` of this listener.
    ///
    /// # Errors
    ///
    /// [`MessageError::NoSuchConnection`] when it has ended (or never existed here),
    /// [`MessageError::MailboxFull`] when its mailbox is at its limit, and
    /// [`MessageError::TooLarge`] when no mailbox can hold `payload`. Nothing was sent.
    pub fn send(to: u64, payload: &[u8]) -> Result<(), MessageError> {
        imports::send(to, payload)
    }

    /// Send `payload` to every other connection of this listener; returns how many took it.
    pub fn broadcast(payload: &[u8]) -> u32 {
        imports::broadcast(payload)
    }

    /// The open connections of this listener, this one included, in id order.
    #[must_use]
    pub fn peers() -> Vec<Peer> {
        imports::peers()
    }

    /// The name [`peers`] shows for this connection (at most 256 bytes are kept). Any
    /// name, even one another connection has: to make names unique, use [`claim_name`].
    pub fn set_name(name: &str) {
        imports::set_name(name);
    }

    /// Take `name` as this connection's name, unless another connection of the listener has
    /// it (ignoring ASCII case) or it is another live connection's id — checked and set at
    /// once by the host, so two connections never hold one name.
    ///
    /// # Errors
    ///
    /// [`NameError::Taken`], or [`NameError::Invalid`] for an empty or overlong (past 256
    /// bytes) name. The name was not set.
    pub fn claim_name(name: &str) -> Result<(), NameError> {
        imports::claim_name(name)
    }
}

/// Configuration values the operator granted this listener (`[listener.capabilities] config`
/// in `shoal.toml`).
pub mod config {
    use crate::bindings::plugin::config as imports;

    /// The value of `key`, if granted.
    #[must_use]
    pub fn get(key: &str) -> Option<String> {
        imports::get(key)
    }

    /// Every granted key and value.
    #[must_use]
    pub fn entries() -> Vec<(String, String)> {
        imports::entries()
    }
}

/// Write one line to the host's log, tagged with this connection's id and the plugin's name.
/// The host drops lines past a per-connection rate.
pub fn log(level: Level, message: &str) {
    bindings::plugin::log::log(level, message);
}

/// Export a [`Handler`] as this component's `shoal:plugin/handler` implementation.
///
/// Use it once, at the top level of the plugin crate: `shoal_guest::export_handler!(MyType);`,
/// or `shoal_guest::export_handler!(MyType, handoff);` for a type that also implements
/// [`Handoff`] (the component then exports `shoal:plugin/handoff` too).
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            $crate::__handler_state!($handler);
            $crate::__handler_export!($handler, $crate::bindings::exported::handler::Guest);
    $crate::bindings::__export_plugin!(ShoalExport with_types_in $crate::bindings);
        };
    };
    ($handler:ty, handoff) => {
        const _: () = {
            $crate::__handler_state!($handler);
            $crate::__handler_export!($handler, $crate::bindings::exported::handler::Guest);
    $crate::bindings::__export_plugin!(ShoalExport with_types_in $crate::bindings);

            impl $crate::handoff_bindings::exported::handoff::Guest for ShoalExport {
                fn snapshot() -> ::std::vec::Vec<u8> {
                    STATE.with_borrow(|slot| match slot {
                        ::std::option::Option::Some(state) => {
                            <$handler as $crate::Handoff>::snapshot(state)
                        }
                        ::std::option::Option::None => ::std::panic!(
                            "shoal-guest: `snapshot` called without a live connection"
                        ),
                    })
                }

                fn resume(
                    info: $crate::ConnInfo,
                    state: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<$crate::Next, ::std::string::String> {
                    let (state, next) = <$handler as $crate::Handoff>::resume(info, &state)?;
                    STATE.with_borrow_mut(|slot| *slot = ::std::option::Option::Some(state));
                    ::std::result::Result::Ok(next)
                }
            }

            $crate::handoff_bindings::__export_handoff!(
                ShoalExport with_types_in $crate::handoff_bindings
            );
        };
    };
}

/// The connection's state slot (one per instance) and the type that exports it.
#[doc(hidden)]
#[macro_export]
macro_rules! __handler_state {
    ($handler:ty) => {
        ::std::thread_local! {
            static STATE: ::std::cell::RefCell<::std::option::Option<$handler>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        struct ShoalExport;
    };
}

/// `$handler`'s three lifecycle steps as the `handler` export `$guest`.
#[doc(hidden)]
#[macro_export]
macro_rules! __handler_export {
    ($handler:ty, $guest:path) => {
        impl $guest for ShoalExport {
            fn init(
                info: $crate::ConnInfo,
            ) -> ::std::result::Result<$crate::Next, ::std::string::String> {
                let (state, next) = <$handler as $crate::Handler>::init(info)?;
                STATE.with_borrow_mut(|slot| *slot = ::std::option::Option::Some(state));
                ::std::result::Result::Ok(next)
            }

            fn handle(event: $crate::Event) -> $crate::Next {
                STATE.with_borrow_mut(|slot| match slot {
                    ::std::option::Option::Some(state) => {
                        <$handler as $crate::Handler>::handle(state, event)
                    }
                    // A host bug, never a plugin's: trap loudly rather than hide it.
                    ::std::option::Option::None => {
                        ::std::panic!("shoal-guest: `handle` called without a successful `init`")
                    }
                })
            }

            fn close(reason: $crate::CloseReason) {
                match STATE.take() {
                    ::std::option::Option::Some(state) => {
                        <$handler as $crate::Handler>::close(state, reason)
                    }
                    ::std::option::Option::None => ::std::panic!(
                        "shoal-guest: `close` called twice or without a successful `init`"
                    ),
                }
            }
        }
    };
}
