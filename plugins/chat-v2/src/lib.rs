//! The chat of `plugins/chat`, built under another name (for the handoff tests): the same
//! room, whose `/version` answers `* chat-v2`, so that a client can tell which version
//! serves it after a swap.

#[path = "../../chat/src/room.rs"]
mod room;

shoal_guest::export_handler!(room::Chat, handoff);
