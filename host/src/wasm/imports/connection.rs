//! `shoal:plugin/connection`: the guest's own connection. `send` queues bytes that the
//! connection task writes after the call, bounded by the listener's output limit; `tls`
//! tells about the connection's TLS session.

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmList};

use crate::config::units::size;
use crate::wasm::bindings::plugin::connection;
use crate::wasm::bindings::plugin::types::{SendError, TlsInfo};
use crate::wasm::store::ConnState;

/// The interface whose `send` [`define_send_from_guest_memory`] defines again.
const INTERFACE: &str = "shoal:plugin/connection@0.2.0";

/// Define `send` again, over the one the generated bindings define: the bytes are copied
/// from the guest's memory straight into the connection's output buffer. The generated
/// `send` takes a `Vec<u8>`, which wasmtime allocates and fills for every call, and which
/// then replaces the output buffer (freeing the one before): an allocation and a free per
/// send on the path of every echo.
pub(super) fn define_send_from_guest_memory(
    linker: &mut Linker<ConnState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker.instance(INTERFACE).and_then(|mut connection| {
        connection.func_wrap(
            "send",
            |mut store: StoreContextMut<'_, ConnState>, (data,): (WasmList<u8>,)| {
                Ok((send_from_guest_memory(&mut store, &data),))
            },
        )
    });
    linker.allow_shadowing(false);
    defined
}

/// `send` of bytes still in the guest's memory.
fn send_from_guest_memory(
    store: &mut StoreContextMut<'_, ConnState>,
    data: &WasmList<u8>,
) -> Result<(), SendError> {
    store.data_mut().may_send(data.len())?;
    // The output buffer is taken out of the store while the guest's memory is borrowed.
    let mut output = std::mem::take(store.data_mut().output_for(data.len()));
    output.extend_from_slice(data.as_le_slice(&*store));
    store.data_mut().output = output;
    Ok(())
}

impl ConnState {
    /// Whether a send of `len` bytes may be queued: the connection is writable and the
    /// output stays within its limit (logged once per connection when it would not).
    fn may_send(&mut self, len: usize) -> Result<(), SendError> {
        if !self.writable {
            return Err(SendError::Closed);
        }
        if self.output.len() + len > self.output_limit {
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
                    len,
                    self.output.len()
                );
            }
            return Err(SendError::BufferFull);
        }
        Ok(())
    }
}

impl connection::Host for ConnState {
    /// The generated bindings' `send`, which the linker defines again (see
    /// [`define_send_from_guest_memory`]); 0.1.0 plugins' `send` still calls it.
    fn send(&mut self, data: Vec<u8>) -> Result<(), SendError> {
        self.may_send(data.len())?;
        self.output_for(data.len()).extend_from_slice(&data);
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
