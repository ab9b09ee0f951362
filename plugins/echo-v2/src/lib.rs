//! Echo, second version (for the hot-swap tests): says `v2` on connect, then every byte a
//! client sends comes straight back — so a client knows from its first bytes which version
//! serves it, whatever the chunking.

use shoal_guest::{ConnInfo, Event, Handler, Next};

struct Echo;

impl Handler for Echo {
    fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
        match shoal_guest::send(b"v2\n") {
            Ok(()) => Ok((Echo, Next::Continue)),
            Err(error) => Err(format!("cannot greet: {error:?}")),
        }
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
