//! Misbehaving test plugin: on every chunk it receives it allocates memory without end (1 MiB
//! at a time, touched and kept), until the listener's memory limit stops it. The tests use it
//! to show the limit ends only this connection.

use shoal_guest::{ConnInfo, Event, Handler, Next};

struct Hog {
    kept: Vec<Vec<u8>>,
}

impl Handler for Hog {
    fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
        Ok((Hog { kept: Vec::new() }, Next::Continue))
    }

    fn handle(&mut self, _event: Event) -> Next {
        loop {
            self.kept.push(vec![1u8; 1 << 20]);
        }
    }
}

shoal_guest::export_handler!(Hog);
