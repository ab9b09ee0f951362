//! `shoal:plugin/log`: guest log lines into the host's log, rate-limited per connection.

use crate::wasm::bindings::plugin::log;
use crate::wasm::bindings::plugin::types::Level;
use crate::wasm::store::ConnState;

impl log::Host for ConnState {
    fn log(&mut self, level: Level, message: String) {
        if let Ok(mut log) = self.log.lock() {
            log.line(level, &message);
        }
    }
}
