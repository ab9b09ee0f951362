//! A line-based chat room: every connection of the listener is in the room.
//!
//! - on join, every other client gets `* <id> joined`;
//! - each line a client sends reaches every other client as `<name>: <line>` (the name is
//!   the connection id until `/nick`); the lines of one chunk travel as one message;
//! - `/nick NAME` renames (others get `* <old> is now NAME`);
//! - `/who` lists who is connected, one `* <id> <name>` line each;
//! - `/version` names the plugin that serves the connection (`* chat`);
//! - on leave, the others get `* <name> left`;
//! - with `announce = "off"` in the listener's granted config, joins and leaves are not
//!   announced (a large room whose members hibernate: each notice would wake them all).
//!
//! Lines end with `\n` (a `\r` before it is dropped); a line longer than 4 KiB is cut there,
//! but a command (`/...`) longer than that is refused whole. Control characters in a line are
//! relayed escaped (`\u{1b}`), never raw: they could retitle or clear the others' terminals.
//! A name is 1 to 32 ASCII letters, digits, `_` or `-` (the same in every language shoal's
//! chat is written in; no look-alike letters from other scripts), unique in the room
//! (ignoring case, and never another member's id): the host
//! checks and sets it at once (`mailbox::claim_name`).
//!
//! A connection moves to a new version of the plugin with its name and any partial line
//! (`Handoff`): a swap does not disconnect the room.

mod room;

shoal_guest::export_handler!(room::Chat, handoff);
