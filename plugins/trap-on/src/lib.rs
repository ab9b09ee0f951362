//! Test plugin: echoes like `echo`, but panics (a Wasm trap) on any chunk that contains `trap`.
//! The integration tests use it to show that a trap ends only its own connection.

use shoal_guest::{ConnInfo, Event, Handler, Next};

struct TrapOn;

impl Handler for TrapOn {
    fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
        Ok((TrapOn, Next::Continue))
    }

    fn handle(&mut self, event: Event) -> Next {
        if let Event::Data(bytes) = event {
            if bytes.windows(4).any(|w| w == b"trap") {
                panic!("asked to trap");
            }
            if shoal_guest::send(&bytes).is_err() {
                return Next::Close;
            }
        }
        Next::Continue
    }
}

shoal_guest::export_handler!(TrapOn);
