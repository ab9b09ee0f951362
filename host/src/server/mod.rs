//! The server side: listeners, their acceptor pools, one task per connection over a
//! transport, embedder hooks, and the low-level listen/accept/receive API.

pub(crate) mod acceptor;
pub(crate) mod connection;
pub(crate) mod ending;
pub(crate) mod hooks;
pub(crate) mod io;
pub(crate) mod listener;
pub(crate) mod quiet;
pub(crate) mod tcp;
pub(crate) mod transport;
