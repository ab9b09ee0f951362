//! Test plugin: drives the mailbox imports from a line protocol, so the integration tests can
//! check delivery, errors and faults one step at a time. Messages received are written to
//! the client as `<from>: <payload>`.
//!
//! - `id` → the connection's id;
//! - `to ID TEXT` → sends TEXT to connection ID; answers `ok` or `error: <what>`;
//! - `all TEXT` → broadcasts TEXT; answers `sent to N`;
//! - `burst N` → broadcasts `m1` … `mN`, one message each; answers `sent`;
//! - `burst-then-trap N` → broadcasts `m1` … `mN`, then traps (a panic).

use shoal_guest::{ConnInfo, Event, Handler, MessageError, Next, mailbox, send};

struct Courier {
    id: u64,
    partial: Vec<u8>,
}

impl Handler for Courier {
    fn init(info: ConnInfo) -> Result<(Self, Next), String> {
        let courier = Courier {
            id: info.id,
            partial: Vec::new(),
        };
        Ok((courier, Next::Continue))
    }

    fn handle(&mut self, event: Event) -> Next {
        match event {
            Event::Data(bytes) => {
                self.partial.extend_from_slice(&bytes);
                while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.partial.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line[..end]).trim().to_string();
                    self.command(&line);
                }
            }
            Event::Message(envelope) => {
                let text = String::from_utf8_lossy(&envelope.payload);
                answer(&format!("{}: {text}", envelope.from));
            }
        }
        Next::Continue
    }
}

impl Courier {
    fn command(&self, line: &str) {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "id" => answer(&self.id.to_string()),
            "to" => {
                let (to, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let Ok(to) = to.parse() else {
                    return answer("error: bad id");
                };
                match mailbox::send(to, text.as_bytes()) {
                    Ok(()) => answer("ok"),
                    Err(MessageError::NoSuchConnection) => answer("error: no-such-connection"),
                    Err(MessageError::MailboxFull) => answer("error: mailbox-full"),
                    Err(MessageError::TooLarge) => answer("error: too-large"),
                }
            }
            "all" => answer(&format!("sent to {}", mailbox::broadcast(rest.as_bytes()))),
            "burst" | "burst-then-trap" => {
                let count: u32 = rest.parse().unwrap_or(0);
                for n in 1..=count {
                    mailbox::broadcast(format!("m{n}").as_bytes());
                }
                if verb == "burst-then-trap" {
                    panic!("asked to trap after {count} messages");
                }
                answer("sent");
            }
            _ => answer("error: unknown command"),
        }
    }
}

fn answer(line: &str) {
    let _ = send(format!("{line}\n").as_bytes());
}

shoal_guest::export_handler!(Courier);
