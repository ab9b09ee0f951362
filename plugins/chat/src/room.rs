use shoal_guest::{CloseReason, ConnInfo, Event, Handler, Handoff, Level, Next, config, mailbox};

/// Longest line kept; the rest of a longer line starts a new one.
const MAX_LINE: usize = 4096;
/// The lines of one chunk go to the room in messages of about this size: one broadcast per
/// chunk rather than per line (a chunk of short lines would otherwise cost thousands of
/// messages per member).
const BATCH: usize = 32 * 1024;
const MAX_NAME: usize = 32;
const TOO_LONG: &[u8] =
    b"* a command line is at most 4096 bytes: that one was too long and is ignored\n";

pub struct Chat {
    id: u64,
    name: String,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Dropping the rest of an overlong command, up to its newline.
    discarding: bool,
    /// Lines for the room, sent together at the end of the chunk (or sooner, see `BATCH`).
    outgoing: Vec<u8>,
}

impl Handler for Chat {
    fn init(info: ConnInfo) -> Result<(Self, Next), String> {
        let chat = Chat {
            id: info.id,
            name: info.id.to_string(),
            partial: Vec::new(),
            discarding: false,
            outgoing: Vec::new(),
        };
        if announces() {
            mailbox::broadcast(format!("* {} joined\n", chat.id).as_bytes());
        }
        let welcome = format!(
            "* welcome, you are {}; /nick NAME renames you, /who lists the room\n",
            chat.id
        );
        Ok((chat, reply(welcome.as_bytes())))
    }

    fn handle(&mut self, event: Event) -> Next {
        match event {
            Event::Data(bytes) => {
                let next = self.received(&bytes);
                // Whatever happens next, the lines already read reach the room.
                self.flush();
                next
            }
            // Other members' lines and notices arrive formatted: pass them on.
            Event::Message(envelope) => reply(&envelope.payload),
        }
    }

    fn close(self, _reason: CloseReason) {
        if announces() {
            mailbox::broadcast(format!("* {} left\n", self.name).as_bytes());
        }
    }
}

/// Whether joins and leaves are announced to the room: unless the listener grants
/// `announce = "off"` in its config (a room of thousands, most of them asleep, where every
/// join would wake everyone).
fn announces() -> bool {
    config::get("announce").as_deref() != Some("off")
}

/// The first byte of a snapshot: the layout of what follows.
const SNAPSHOT_LAYOUT: u8 = 1;

/// A connection moves to a new version with its name, its partial line and whether it is
/// dropping the rest of an overlong command: `[layout, discarding, name length (u16 LE),
/// name, partial line]`. Nothing else is pending between two calls (the room's lines go out
/// at the end of each chunk).
impl Handoff for Chat {
    fn snapshot(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let length = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let mut state = Vec::with_capacity(4 + name.len() + self.partial.len());
        state.push(SNAPSHOT_LAYOUT);
        state.push(u8::from(self.discarding));
        state.extend_from_slice(&length.to_le_bytes());
        state.extend_from_slice(&name[..usize::from(length)]);
        state.extend_from_slice(&self.partial);
        state
    }

    fn resume(info: ConnInfo, state: &[u8]) -> Result<(Self, Next), String> {
        let [layout, discarding, l0, l1, rest @ ..] = state else {
            return Err(format!(
                "a chat snapshot of {} bytes is too short",
                state.len()
            ));
        };
        if *layout != SNAPSHOT_LAYOUT {
            return Err(format!("unknown chat snapshot layout {layout}"));
        }
        let length = usize::from(u16::from_le_bytes([*l0, *l1]));
        if rest.len() < length {
            return Err("a chat snapshot's name is cut short".to_string());
        }
        let (name, partial) = rest.split_at(length);
        let name = String::from_utf8(name.to_vec()).map_err(|_| "a chat name is not UTF-8")?;
        let chat = Chat {
            id: info.id,
            name,
            partial: partial.to_vec(),
            discarding: *discarding != 0,
            outgoing: Vec::new(),
        };
        Ok((chat, Next::Continue))
    }
}

impl Chat {
    fn received(&mut self, mut bytes: &[u8]) -> Next {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (chunk, ended) = match newline {
                Some(end) => (&bytes[..end], true),
                None => (bytes, false),
            };
            bytes = newline.map_or(&[][..], |end| &bytes[end + 1..]);
            if self.discarding {
                self.discarding = !ended;
                continue;
            }
            self.partial.extend_from_slice(chunk);
            // Overlong: a command is refused whole, text goes out in lines of MAX_LINE.
            let mut refused = false;
            while self.partial.len() > MAX_LINE || (!ended && self.partial.len() == MAX_LINE) {
                if self.partial.starts_with(b"/") {
                    self.partial.clear();
                    self.discarding = !ended;
                    refused = true;
                    if reply(TOO_LONG) == Next::Close {
                        return Next::Close;
                    }
                    break;
                }
                let rest = self.partial.split_off(MAX_LINE);
                let line = std::mem::replace(&mut self.partial, rest);
                if self.line(&line) == Next::Close {
                    return Next::Close;
                }
            }
            if ended && !refused {
                let line = std::mem::take(&mut self.partial);
                if self.line(&line) == Next::Close {
                    return Next::Close;
                }
            }
        }
        Next::Continue
    }

    fn line(&mut self, line: &[u8]) -> Next {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        let line = printable(&line);
        if let Some(name) = line.strip_prefix("/nick ") {
            self.rename(name.trim())
        } else if line.trim() == "/who" {
            self.who()
        } else if line.trim() == "/version" {
            self.flush();
            reply(concat!("* ", env!("CARGO_PKG_NAME"), "\n").as_bytes())
        } else {
            self.outgoing
                .extend_from_slice(format!("{}: {line}\n", self.name).as_bytes());
            if self.outgoing.len() >= BATCH {
                self.flush();
            }
            Next::Continue
        }
    }

    /// Send the room the lines gathered so far.
    fn flush(&mut self) {
        if !self.outgoing.is_empty() {
            mailbox::broadcast(&self.outgoing);
            self.outgoing.clear();
        }
    }

    fn rename(&mut self, name: &str) -> Next {
        // The lines before the rename go out under the old name, first.
        self.flush();
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return reply(b"* a name is 1 to 32 letters, digits, _ or -\n");
        }
        if mailbox::claim_name(name).is_err() {
            return reply(format!("* the name {name} is taken\n").as_bytes());
        }
        mailbox::broadcast(format!("* {} is now {name}\n", self.name).as_bytes());
        self.name = name.to_string();
        reply(format!("* you are now {name}\n").as_bytes())
    }

    fn who(&mut self) -> Next {
        self.flush();
        let mut list = String::new();
        for peer in mailbox::peers() {
            let name = peer.name.unwrap_or_else(|| peer.id.to_string());
            let me = if peer.id == self.id { " (you)" } else { "" };
            list.push_str(&format!("* {} {name}{me}\n", peer.id));
        }
        reply(list.as_bytes())
    }
}

/// `text` with every control character shown as an escape (`\t`, `\u{1b}`), so that no
/// member can send the others' terminals a raw escape sequence.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

/// Send to this connection's client; close when it cannot take more.
fn reply(bytes: &[u8]) -> Next {
    match shoal_guest::send(bytes) {
        Ok(()) => Next::Continue,
        Err(error) => {
            shoal_guest::log(Level::Warn, &format!("closing: cannot send: {error:?}"));
            Next::Close
        }
    }
}
