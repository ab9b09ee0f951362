//! Test plugin built against `shoal:plugin@0.1.0` (`wit/deps/shoal-plugin-0.1.0`), the world
//! before `close(upgrade)` and `handoff`: a plugin nobody rebuilt must keep loading and
//! serving. It greets `hello from 0.1.0`, answers each line with `<id>: <line>`, the line
//! `peers` with how many connections the listener has (through the 0.1.0 mailbox import),
//! and says `bye (<reason>)` in `close`.

wit_bindgen::generate!({ world: "plugin", path: "../../wit/deps/shoal-plugin-0.1.0" });

use exports::shoal::plugin::handler::Guest;
use shoal::plugin::types::{CloseReason, ConnInfo, Event, Next};
use shoal::plugin::{connection, mailbox};

std::thread_local! {
    static STATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

struct Greeter;

impl Guest for Greeter {
    fn init(info: ConnInfo) -> Result<Next, String> {
        STATE.with_borrow_mut(|state| state.0 = info.id);
        send(b"hello from 0.1.0\n");
        Ok(Next::Continue)
    }

    fn handle(event: Event) -> Next {
        let Event::Data(bytes) = event else {
            return Next::Continue;
        };
        STATE.with_borrow_mut(|(id, line)| {
            for byte in bytes {
                if byte != b'\n' {
                    line.push(byte);
                    continue;
                }
                let text = String::from_utf8_lossy(line).into_owned();
                line.clear();
                let reply = if text.trim() == "peers" {
                    format!("{} peers\n", mailbox::peers().len())
                } else {
                    format!("{id}: {text}\n")
                };
                send(reply.as_bytes());
            }
        });
        Next::Continue
    }

    fn close(reason: CloseReason) {
        let reason = match reason {
            CloseReason::PeerClosed => "peer-closed".to_string(),
            CloseReason::GuestClosed => "guest-closed".to_string(),
            CloseReason::IdleTimeout => "idle-timeout".to_string(),
            CloseReason::Shutdown => "shutdown".to_string(),
            CloseReason::Limit(what) => format!("limit: {what}"),
            CloseReason::Error(what) => format!("error: {what}"),
        };
        send(format!("bye ({reason})\n").as_bytes());
    }
}

fn send(bytes: &[u8]) {
    let _ = connection::send(bytes);
}

export!(Greeter);
