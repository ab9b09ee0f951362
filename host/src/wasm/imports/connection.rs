//! `shoal:plugin/connection`: the guest's own connection. `send` queues bytes that the
//! connection task writes after the call, bounded by the listener's output limit; `tls`
//! tells about the connection's TLS session.

use crate::config::units::size;
use crate::wasm::bindings::plugin::connection;
use crate::wasm::bindings::plugin::types::{SendError, TlsInfo};
use crate::wasm::store::ConnState;

impl connection::Host for ConnState {
    fn send(&mut self, data: Vec<u8>) -> Result<(), SendError> {
        if !self.writable {
            return Err(SendError::Closed);
        }
        if self.output.len() + data.len() > self.output_limit {
            if !self.output_refused {
                // Once per connection, at the default level: a limit that refuses output
                // (and so, often, ends the connection by the guest's choice) must be seen.
                self.output_refused = true;
                tracing::info!(
                    conn = self.conn_id,
                    plugin = self.plugin_name(),
                    "limit reached: output_buffer_limit ({}): a send of {} bytes was refused \
                     (buffer-full) with {} bytes queued",
                    size(&self.output_limit),
                    data.len(),
                    self.output.len()
                );
            }
            return Err(SendError::BufferFull);
        }
        if self.output.is_empty() {
            self.output = data;
        } else {
            self.output.extend_from_slice(&data);
        }
        Ok(())
    }

    fn tls(&mut self) -> Option<TlsInfo> {
        self.tls.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::store::tests::settings;

    #[test]
    fn send_respects_the_output_limit() {
        let mut state = ConnState::new(&settings(8));
        assert_eq!(
            connection::Host::send(&mut state, b"12345".to_vec()),
            Ok(())
        );
        assert_eq!(
            connection::Host::send(&mut state, b"6789".to_vec()),
            Err(SendError::BufferFull)
        );
        assert_eq!(connection::Host::send(&mut state, b"678".to_vec()), Ok(()));
        assert_eq!(state.output(), b"12345678");
        state.mark_unwritable();
        assert_eq!(
            connection::Host::send(&mut state, b"x".to_vec()),
            Err(SendError::Closed)
        );
    }
}
