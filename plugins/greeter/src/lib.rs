//! Test plugin: greets in `init`, closes when a line is `quit`, and makes its `close` call
//! observable: it logs `close called: <reason>` and sends `bye (<reason>)` when the client can
//! still read. Every other line comes back prefixed with the connection id.

use shoal_guest::{CloseReason, ConnInfo, Event, Handler, Level, Next};

struct Greeter {
    id: u64,
    line: Vec<u8>,
}

impl Handler for Greeter {
    fn init(info: ConnInfo) -> Result<(Self, Next), String> {
        let greeting = format!("hello {} from {}\n", info.id, info.listener);
        let next = match shoal_guest::send(greeting.as_bytes()) {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close,
        };
        Ok((
            Greeter {
                id: info.id,
                line: Vec::new(),
            },
            next,
        ))
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
            if line.trim_ascii() == b"quit" {
                return Next::Close;
            }
            let mut reply = format!("{}: ", self.id).into_bytes();
            reply.extend_from_slice(&line);
            reply.push(b'\n');
            if shoal_guest::send(&reply).is_err() {
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
            CloseReason::Limit(what) => format!("limit: {what}"),
            CloseReason::Error(what) => format!("error: {what}"),
        };
        shoal_guest::log(Level::Info, &format!("close called: {reason}"));
        let _ = shoal_guest::send(format!("bye ({reason})\n").as_bytes());
    }
}

shoal_guest::export_handler!(Greeter);
