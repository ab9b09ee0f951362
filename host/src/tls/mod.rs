//! TLS per listener, with rustls on the `ring` provider: the files a listener is given,
//! loaded and checked into a [`Tls`] ([`settings`]); the handshake of each accepted socket,
//! bounded by the listener's `handshake_timeout` ([`handshake`]); and the encrypted stream as
//! a second [`Transport`](crate::Transport), which tells the guest about its session
//! ([`stream`]).

pub(crate) mod handshake;
pub(crate) mod settings;
pub(crate) mod stream;
