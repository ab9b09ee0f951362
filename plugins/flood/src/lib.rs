//! Misbehaving test plugin: sends without end. In `init` and on every event it queues 64 KiB
//! chunks until the host answers `buffer-full`, then waits for the next event — so a client
//! that does not read meets the output buffer limit and then the write timeout.

use shoal_guest::{ConnInfo, Event, Handler, Next, SendError};

struct Flood;

impl Handler for Flood {
    fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
        Ok((Flood, fill()))
    }

    fn handle(&mut self, _event: Event) -> Next {
        fill()
    }
}

/// Send until the output queue is full.
fn fill() -> Next {
    let chunk = vec![b'~'; 64 << 10];
    loop {
        match shoal_guest::send(&chunk) {
            Ok(()) => {}
            Err(SendError::BufferFull) => return Next::Continue,
            Err(SendError::Closed) => return Next::Close,
        }
    }
}

shoal_guest::export_handler!(Flood);
