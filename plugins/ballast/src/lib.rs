//! Benchmark plugin: the echo plugin, but each connection keeps 64 KiB of state (written in
//! `init`, so every page is touched). It shows how lifecycle time and memory per connection
//! grow with a guest's linear memory.

use shoal_guest::{ConnInfo, Event, Handler, Next};

const STATE_BYTES: usize = 64 << 10;

struct Ballast {
    state: Vec<u8>,
}

impl Handler for Ballast {
    fn init(info: ConnInfo) -> Result<(Self, Next), String> {
        let state = vec![info.id as u8 | 1; STATE_BYTES];
        Ok((Ballast { state }, Next::Continue))
    }

    fn handle(&mut self, event: Event) -> Next {
        let bytes = match event {
            Event::Data(bytes) => bytes,
            Event::Message(envelope) => envelope.payload,
        };
        // Read the state so it cannot be optimised away.
        if self.state[bytes.len() % STATE_BYTES] == 0 {
            return Next::Close;
        }
        match shoal_guest::send(&bytes) {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close,
        }
    }
}

shoal_guest::export_handler!(Ballast);
