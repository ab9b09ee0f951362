//! Echo: every byte a client sends comes straight back.

use shoal_guest::{ConnInfo, Event, Handler, Next};

struct Echo;

impl Handler for Echo {
    fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
        Ok((Echo, Next::Continue))
    }

    fn handle(&mut self, event: Event) -> Next {
        let bytes = match event {
            Event::Data(bytes) => bytes,
            Event::Message(envelope) => envelope.payload,
        };
        match shoal_guest::send(&bytes) {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close,
        }
    }
}

shoal_guest::export_handler!(Echo);
