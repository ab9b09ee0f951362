//! `shoal:plugin/mailbox`: messages to the other connections of the listener, through its
//! registry.

use bytes::Bytes;

use crate::messages::types::{MessageError as Refusal, NameError as Refused};
use crate::wasm::bindings::plugin::mailbox;
use crate::wasm::bindings::plugin::types::{MessageError, NameError, Peer};
use crate::wasm::store::ConnState;

impl mailbox::Host for ConnState {
    async fn send(&mut self, to: u64, payload: Vec<u8>) -> Result<(), MessageError> {
        self.mailboxes
            .send_waiting(self.conn_id, to, Bytes::from(payload), &self.mailbox_waits)
            .await
            .map_err(|error| match error {
                Refusal::NoSuchConnection => MessageError::NoSuchConnection,
                Refusal::MailboxFull => MessageError::MailboxFull,
                Refusal::TooLarge => MessageError::TooLarge,
            })
    }

    async fn broadcast(&mut self, payload: Vec<u8>) -> u32 {
        let delivered = self
            .mailboxes
            .broadcast_waiting(self.conn_id, Bytes::from(payload), &self.mailbox_waits)
            .await;
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }

    fn peers(&mut self) -> Vec<Peer> {
        self.mailboxes
            .peers()
            .into_iter()
            .map(|peer| Peer {
                id: peer.id,
                name: peer.name,
            })
            .collect()
    }

    fn set_name(&mut self, name: String) {
        self.mailboxes.set_name(self.conn_id, &name);
    }

    fn claim_name(&mut self, name: String) -> Result<(), NameError> {
        self.mailboxes
            .claim_name(self.conn_id, &name)
            .map_err(|error| match error {
                Refused::Taken => NameError::Taken,
                Refused::Invalid => NameError::Invalid,
            })
    }
}
