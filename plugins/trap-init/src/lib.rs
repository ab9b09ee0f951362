//! Misbehaving test plugin: traps (panics) in `init`, so no connection ever gets a byte.

use shoal_guest::{ConnInfo, Event, Handler, Next};

struct TrapInit;

impl Handler for TrapInit {
    fn init(info: ConnInfo) -> Result<(Self, Next), String> {
        panic!("trap-init: refusing connection {} the hard way", info.id);
    }

    fn handle(&mut self, _event: Event) -> Next {
        Next::Close
    }
}

shoal_guest::export_handler!(TrapInit);
