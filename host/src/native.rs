//! Native Rust connection handlers, served by the same acceptor pool and connection task as
//! Wasm plugins. [`Echo`] is the benchmarks' baseline: the same echo as `plugins/echo`, so
//! the difference between the two is the cost of the sandbox.

use std::sync::Arc;

use crate::error::{GuestFault, InstantiateError};
use crate::handler::{ConnectionHandler, HandlerFactory, NewConnection};
use crate::observe::stats::{Live, LiveKind};
use crate::wasm::bindings::plugin::types::{CloseReason, ConnInfo, Event, Next};

/// Makes a native echo handler per connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

/// One connection's native echo: every byte received is queued to be sent back.
#[derive(Debug)]
pub struct EchoConnection {
    output: Vec<u8>,
    output_limit: usize,
    writable: bool,
    _live: Live,
}

impl HandlerFactory for Echo {
    type Handler = EchoConnection;

    fn name(&self) -> &str {
        "native-echo"
    }

    async fn create(&self, conn: NewConnection<'_>) -> Result<EchoConnection, InstantiateError> {
        Ok(EchoConnection {
            output: Vec::new(),
            output_limit: conn.config.output_buffer_limit(),
            writable: true,
            _live: Live::new(Arc::clone(conn.stats), LiveKind::Instance),
        })
    }
}

impl ConnectionHandler for EchoConnection {
    async fn init(&mut self, _info: &ConnInfo) -> Result<Result<Next, String>, GuestFault> {
        Ok(Ok(Next::Continue))
    }

    async fn handle(&mut self, event: &Event) -> Result<Next, GuestFault> {
        let bytes = match event {
            Event::Data(bytes) => bytes,
            Event::Message(envelope) => &envelope.payload,
        };
        // The same rule as the `send` import: refuse what would pass the limit, and the echo
        // plugin closes when its send is refused.
        if !self.writable || self.output.len() + bytes.len() > self.output_limit {
            return Ok(Next::Close);
        }
        self.output.extend_from_slice(bytes);
        Ok(Next::Continue)
    }

    async fn close(&mut self, _reason: &CloseReason) -> Result<(), GuestFault> {
        Ok(())
    }

    fn output(&self) -> &[u8] {
        &self.output
    }

    fn clear_output(&mut self) {
        self.output.clear();
    }

    fn mark_unwritable(&mut self) {
        self.writable = false;
        self.output.clear();
    }
}
