//! Why a connection ended: one typed value that the connection task produces, the stats
//! count ([`EndKind`]), the log names, and that becomes the WIT `close-reason` only at the
//! guest edge ([`Ending::close_reason`]).

use std::fmt;
use std::io;

use crate::error::{GuestFault, InstantiateError};
use crate::observe::stats::{EndKind, Limit};
use crate::wasm::bindings::plugin::types::CloseReason;

/// Why one connection ended, with what the log needs to say about it.
#[derive(Debug)]
pub(crate) enum Ending {
    /// End of stream from the client, or a reset: it went away.
    ClientClosed,
    /// The guest returned `next.close`.
    GuestClosed,
    /// The client sent nothing for the listener's idle timeout.
    Idle,
    /// The server is shutting down.
    Shutdown,
    /// The server is shutting down, and its deadline passed before the hibernating
    /// connection could be woken for its `close`: closed without it.
    ShutdownDeadline,
    /// The plugin version it ran was replaced, and the listener's drain deadline passed.
    Drained,
    /// The client did not take a call's output within the write timeout.
    WriteTimeout,
    /// The connection's mailbox overflowed: it missed a message.
    MailboxFull,
    /// Reading or writing the socket failed for another reason than the client leaving.
    Io {
        operation: Operation,
        error: io::Error,
    },
    /// A guest call faulted (a trap, or a limit that stops a call); `close` is not called.
    Fault { export: Export, fault: GuestFault },
    /// `init` refused the connection with this text; `close` is not called.
    Refused(String),
    /// No handler could be made (the instance pool is full, say).
    NoInstance(InstantiateError),
    /// A hibernating connection woke and its plugin's `resume` refused its own state; `close`
    /// is not called. Counted as a fault.
    WakeRefused(String),
}

/// What the connection was doing with its socket when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Read,
    Write,
}

/// The guest export a fault happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Export {
    Init,
    Handle,
    Close,
    Snapshot,
    Resume,
}

impl Export {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Export::Init => "init",
            Export::Handle => "handle",
            Export::Close => "close",
            Export::Snapshot => "snapshot",
            Export::Resume => "resume",
        }
    }
}

/// The texts of the WIT `limit(string)` reasons: what a guest sees in `close`.
const WRITE_TIMEOUT: &str = "write timeout";
const MAILBOX_FULL: &str = "mailbox full";

impl Ending {
    /// The ending a socket error means: a client that vanished (reset, broken pipe, early
    /// end of stream) closed the connection; anything else is an I/O error.
    pub(crate) fn io(operation: Operation, error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Ending::ClientClosed,
            _ => Ending::Io { operation, error },
        }
    }

    /// The counter this ending goes under.
    pub(crate) fn kind(&self) -> EndKind {
        match self {
            Ending::ClientClosed => EndKind::ClientClosed,
            Ending::GuestClosed => EndKind::GuestClosed,
            Ending::Idle => EndKind::Limit(Limit::Idle),
            // Counted with shutdowns until endings by upgrade get a counter of their own.
            Ending::Shutdown => EndKind::Shutdown,
            Ending::ShutdownDeadline => EndKind::ShutdownDeadline,
            Ending::Drained => EndKind::Upgrade,
            Ending::WriteTimeout => EndKind::Limit(Limit::Write),
            Ending::MailboxFull => EndKind::Limit(Limit::Mailbox),
            Ending::Io { .. } => EndKind::IoError,
            Ending::Fault { fault, .. } => fault.limit().map_or(EndKind::Trap, EndKind::Limit),
            Ending::Refused(_) | Ending::WakeRefused(_) => EndKind::Refused,
            Ending::NoInstance(error) if error.is_listener_full() => {
                EndKind::Limit(Limit::Instances)
            }
            Ending::NoInstance(_) => EndKind::NoInstance,
        }
    }

    /// What the guest's `close` is told, or `None` when `close` is not called: the guest
    /// faulted (its instance cannot be entered again), refused the connection, or never
    /// started.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        Some(match self {
            Ending::ClientClosed => CloseReason::PeerClosed,
            Ending::GuestClosed => CloseReason::GuestClosed,
            Ending::Idle => CloseReason::IdleTimeout,
            Ending::Shutdown => CloseReason::Shutdown,
            // A plugin of `shoal:plugin@0.1.0`, which has no `upgrade`, is told `shutdown`.
            Ending::Drained => CloseReason::Upgrade,
            Ending::WriteTimeout => CloseReason::Limit(WRITE_TIMEOUT.to_string()),
            Ending::MailboxFull => CloseReason::Limit(MAILBOX_FULL.to_string()),
            Ending::Io { .. } => CloseReason::Error(self.to_string()),
            Ending::Fault { .. }
            | Ending::ShutdownDeadline
            | Ending::Refused(_)
            | Ending::NoInstance(_)
            | Ending::WakeRefused(_) => return None,
        })
    }

    /// Whether it counts as a fault: a guest call faulted, or a woken connection's plugin
    /// refused its own state.
    pub(crate) fn is_fault(&self) -> bool {
        matches!(self, Ending::Fault { .. } | Ending::WakeRefused(_))
    }

    /// The guest fault behind this ending, if a fault ended it.
    pub(crate) fn fault(&self) -> Option<&GuestFault> {
        match self {
            Ending::Fault { fault, .. } => Some(fault),
            _ => None,
        }
    }

    /// How loudly the log reports it: faults and failures to serve are warnings, limits and
    /// refusals information, the ordinary endings debug detail.
    pub(crate) fn level(&self) -> tracing::Level {
        match self {
            Ending::Fault { .. } | Ending::NoInstance(_) | Ending::WakeRefused(_) => {
                tracing::Level::WARN
            }
            Ending::Idle
            | Ending::WriteTimeout
            | Ending::MailboxFull
            | Ending::Refused(_)
            | Ending::Drained => tracing::Level::INFO,
            // The listener says at `warn` how many its shutdown deadline cut short.
            Ending::ClientClosed
            | Ending::GuestClosed
            | Ending::Shutdown
            | Ending::ShutdownDeadline
            | Ending::Io { .. } => tracing::Level::DEBUG,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::ClientClosed => f.write_str("the client closed the connection"),
            Ending::GuestClosed => f.write_str("the plugin closed the connection"),
            Ending::Idle => f.write_str("limit reached: idle_timeout (the client sent nothing)"),
            Ending::Shutdown => f.write_str("the server is shutting down"),
            Ending::ShutdownDeadline => f.write_str(
                "the server is shutting down, and its deadline passed before the hibernating \
                 connection was woken for its `close`",
            ),
            Ending::Drained => f.write_str(
                "its plugin version was replaced and the listener's drain_timeout passed",
            ),
            Ending::WriteTimeout => {
                f.write_str("limit reached: write_timeout (the client did not take its output)")
            }
            Ending::MailboxFull => {
                f.write_str("limit reached: mailbox full (the connection missed a message)")
            }
            Ending::Io { operation, error } => {
                let operation = match operation {
                    Operation::Read => "read",
                    Operation::Write => "write",
                };
                write!(f, "{operation} failed: {error}")
            }
            // The fault itself is logged as the line's last field (`Ending::fault`): its text
            // may run over several lines (a Wasm backtrace).
            Ending::Fault { export, .. } => write!(f, "`{}` failed", export.name()),
            Ending::Refused(text) => write!(f, "plugin refused the connection: {text}"),
            Ending::NoInstance(error) => write!(f, "{error}"),
            Ending::WakeRefused(text) => {
                write!(
                    f,
                    "woken from hibernation, `resume` refused its state: {text}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn instantiate_error() -> InstantiateError {
        InstantiateError {
            plugin: "echo".into(),
            message: "pool full".into(),
            memory_needed: None,
            pool_full: true,
            listener_full: false,
        }
    }

    /// Every ending, with the WIT reason its `close` hears and the counter it goes under.
    fn table() -> Vec<(Ending, Option<CloseReason>, EndKind)> {
        let fault = |fault| Ending::Fault {
            export: Export::Handle,
            fault,
        };
        vec![
            (
                Ending::ClientClosed,
                Some(CloseReason::PeerClosed),
                EndKind::ClientClosed,
            ),
            (
                Ending::GuestClosed,
                Some(CloseReason::GuestClosed),
                EndKind::GuestClosed,
            ),
            (
                Ending::Idle,
                Some(CloseReason::IdleTimeout),
                EndKind::Limit(Limit::Idle),
            ),
            (
                Ending::Shutdown,
                Some(CloseReason::Shutdown),
                EndKind::Shutdown,
            ),
            (Ending::ShutdownDeadline, None, EndKind::ShutdownDeadline),
            (
                Ending::Drained,
                Some(CloseReason::Upgrade),
                EndKind::Upgrade,
            ),
            (
                Ending::WriteTimeout,
                Some(CloseReason::Limit("write timeout".into())),
                EndKind::Limit(Limit::Write),
            ),
            (
                Ending::MailboxFull,
                Some(CloseReason::Limit("mailbox full".into())),
                EndKind::Limit(Limit::Mailbox),
            ),
            (
                Ending::io(Operation::Read, io::Error::other("disk on fire")),
                Some(CloseReason::Error("read failed: disk on fire".into())),
                EndKind::IoError,
            ),
            (
                fault(GuestFault::Trap("unreachable".into())),
                None,
                EndKind::Trap,
            ),
            (
                fault(GuestFault::CpuBudget(Duration::from_millis(100))),
                None,
                EndKind::Limit(Limit::CpuBudget),
            ),
            (
                fault(GuestFault::CallTimeout(Duration::from_secs(5))),
                None,
                EndKind::Limit(Limit::CallTimeout),
            ),
            (
                fault(GuestFault::MemoryLimit(1 << 20)),
                None,
                EndKind::Limit(Limit::Memory),
            ),
            (Ending::Refused("no".into()), None, EndKind::Refused),
            (
                Ending::NoInstance(instantiate_error()),
                None,
                EndKind::NoInstance,
            ),
            (
                Ending::NoInstance(InstantiateError::listener_full("chat", 200)),
                None,
                EndKind::Limit(Limit::Instances),
            ),
        ]
    }

    #[test]
    fn each_ending_has_its_wit_reason_and_its_counter() {
        let stats = crate::observe::stats::Stats::default();
        for (ending, reason, kind) in table() {
            // The generated WIT types do not implement `PartialEq`; their `Debug` shows all.
            let (got, want) = (ending.close_reason(), reason);
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{ending:?}");
            assert_eq!(ending.kind(), kind, "{ending:?}");
            stats.count_ended(ending.kind());
            assert_eq!(stats.ended(kind), 1, "{ending:?} counted once, alone");
        }
    }

    #[test]
    fn every_counter_has_an_ending() {
        // The shutdown deadline is also counted where it drops a running connection's task;
        // a hibernating connection it cuts short ends through its `Ending`. A failed TLS
        // handshake ends a connection before it has a handler, counted by the acceptor
        // (`tls::handshake::HandshakeFailure::end_kind`).
        let kinds: Vec<EndKind> = table().iter().map(|(ending, ..)| ending.kind()).collect();
        let before_a_handler = [EndKind::TlsHandshakeFailed, EndKind::TlsHandshakeTimeout];
        for kind in EndKind::ALL
            .into_iter()
            .filter(|k| !before_a_handler.contains(k))
        {
            assert!(kinds.contains(&kind), "{kind:?}");
        }
    }

    #[test]
    fn a_vanished_client_is_a_close_not_an_error() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            let ending = Ending::io(Operation::Write, io::Error::from(kind));
            assert!(matches!(ending, Ending::ClientClosed), "{kind:?}");
        }
    }

    #[test]
    fn the_log_names_the_export_that_failed() {
        let ending = Ending::Fault {
            export: Export::Init,
            fault: GuestFault::Trap("boom".into()),
        };
        assert_eq!(ending.to_string(), "`init` failed");
        assert_eq!(ending.fault(), Some(&GuestFault::Trap("boom".into())));
        assert_eq!(ending.level(), tracing::Level::WARN);
    }
}
