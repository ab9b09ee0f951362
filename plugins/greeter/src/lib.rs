//! Test plugin: greets in `init`, closes when a line is `quit`, and makes its `close` call
//! observable: it logs `close called: <reason>` and sends `bye (<reason>)` when the client can
//! still read. Every other line comes back prefixed with the connection id.
//!
//! For the tests of the lifecycle's corners it also:
//! * refuses connections (`init` returns an error) on a listener named `refuse`;
//! * greets and closes at once (`init` returns `close`) on a listener named `greet-and-close`;
//! * on the line `flood`, sends 1,000-byte chunks of `x` until `send` says `buffer-full`, and
//!   on the line `status`, says how many bytes that flood queued;
//! * hands its connections off to a new version (`Handoff`) with their partial line; the new
//!   version says `moved <id>`, unless the listener is named `refuse-handoff` (then `resume`
//!   refuses) — and on a listener named `trap-snapshot`, `snapshot` panics.

use shoal_guest::{CloseReason, ConnInfo, Event, Handler, Handoff, Level, Next, SendError};

const FLOOD_CHUNK: [u8; 1000] = [b'x'; 1000];

struct Greeter {
    id: u64,
    listener: String,
    line: Vec<u8>,
    flooded: Option<usize>,
}

impl Handler for Greeter {
    fn init(info: ConnInfo) -> Result<(Self, Next), String> {
        if info.listener == "refuse" {
            return Err(format!("connection {} refused on request", info.id));
        }
        let greeting = format!("hello {} from {}\n", info.id, info.listener);
        let next = match shoal_guest::send(greeting.as_bytes()) {
            Ok(()) if info.listener != "greet-and-close" => Next::Continue,
            _ => Next::Close,
        };
        let greeter = Greeter {
            id: info.id,
            listener: info.listener,
            line: Vec::new(),
            flooded: None,
        };
        Ok((greeter, next))
    }

    fn handle(&mut self, event: Event) -> Next {
        let Event::Data(bytes) = event else {
            return Next::Continue;
        };
        for byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let reply = match line.trim_ascii() {
                b"quit" => return Next::Close,
                b"flood" => {
                    self.flooded = Some(flood());
                    continue;
                }
                b"status" => format!("flooded {:?} bytes until buffer-full\n", self.flooded),
                _ => format!("{}: {}\n", self.id, String::from_utf8_lossy(&line)),
            };
            if shoal_guest::send(reply.as_bytes()).is_err() {
                return Next::Close;
            }
        }
        Next::Continue
    }

    fn close(self, reason: CloseReason) {
        let reason = match reason {
            CloseReason::PeerClosed => "peer-closed".to_string(),
            CloseReason::GuestClosed => "guest-closed".to_string(),
            CloseReason::IdleTimeout => "idle-timeout".to_string(),
            CloseReason::Shutdown => "shutdown".to_string(),
            CloseReason::Upgrade => "upgrade".to_string(),
            CloseReason::Limit(what) => format!("limit: {what}"),
            CloseReason::Error(what) => format!("error: {what}"),
        };
        shoal_guest::log(Level::Info, &format!("close called: {reason}"));
        let _ = shoal_guest::send(format!("bye ({reason})\n").as_bytes());
    }
}

impl Handoff for Greeter {
    fn snapshot(&self) -> Vec<u8> {
        assert!(
            self.listener != "trap-snapshot",
            "snapshot refused on request"
        );
        self.line.clone()
    }

    fn resume(info: ConnInfo, state: &[u8]) -> Result<(Self, Next), String> {
        if info.listener == "refuse-handoff" {
            return Err(format!(
                "connection {} refused its state on request",
                info.id
            ));
        }
        let next = match shoal_guest::send(format!("moved {}\n", info.id).as_bytes()) {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close,
        };
        let greeter = Greeter {
            id: info.id,
            listener: info.listener,
            line: state.to_vec(),
            flooded: None,
        };
        Ok((greeter, next))
    }
}

/// Queue chunks until the host refuses one; returns the bytes queued.
fn flood() -> usize {
    let mut queued = 0;
    loop {
        match shoal_guest::send(&FLOOD_CHUNK) {
            Ok(()) => queued += FLOOD_CHUNK.len(),
            Err(SendError::BufferFull) => return queued,
            Err(SendError::Closed) => return queued,
        }
    }
}

shoal_guest::export_handler!(Greeter, handoff);
