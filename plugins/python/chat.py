"""The chat room of plugins/chat, in Python: the same commands and the same lines on the wire
(see plugins/chat/src/lib.rs for what they are).

Lines end with `\\n` (a `\\r` before it is dropped); a line longer than 4 KiB is cut there,
but a command longer than that is refused whole. Control characters are relayed escaped
(`\\u{1b}`), bytes that are not UTF-8 as U+FFFD. A name is 1 to 32 ASCII letters, digits,
`_` or `-`, unique in the room (the host checks and sets it at once).

One instance serves one connection: the module's globals are this connection's state.
"""

import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import connection, log, mailbox
from wit_world.imports.types import Event_Data, Level, Next, SendError

MAX_LINE = 4096
# The layout of a snapshot, shared with plugins/chat (Rust) and chat.js.
SNAPSHOT_LAYOUT = 1
BATCH = 32 * 1024
TOO_LONG = "* a command line is at most 4096 bytes: that one was too long and is ignored\n"
NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
SPACE = " \t\n\v\f\r"

my_id = 0
name = ""
# The start of a line whose end has not arrived yet.
partial = bytearray()
# Dropping the rest of an overlong command, up to its newline.
discarding = False
# Lines for the room, sent together at the end of the chunk (or sooner, see BATCH).
outgoing = bytearray()


def reply(data):
    """Send to this connection's client; close when it cannot take more."""
    try:
        connection.send(bytes(data))
        return Next.CONTINUE
    except Err as error:
        why = "BufferFull" if error.value == SendError.BUFFER_FULL else "Closed"
        log.log(Level.WARN, f"closing: cannot send: {why}")
        return Next.CLOSE


def flush():
    """Send the room the lines gathered so far."""
    if outgoing:
        mailbox.broadcast(bytes(outgoing))
        outgoing.clear()


def printable(data):
    """`data` as text another terminal can show: controls escaped, invalid UTF-8 as U+FFFD."""
    shown = []
    for c in data.decode("utf-8", errors="replace"):
        code = ord(c)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            shown.append("\\t" if c == "\t" else "\\r" if c == "\r" else f"\\u{{{code:x}}}")
        else:
            shown.append(c)
    return "".join(shown)


def rename(wanted):
    global name
    # The lines before the rename go out under the old name, first.
    flush()
    if not NAME.fullmatch(wanted):
        return reply(b"* a name is 1 to 32 letters, digits, _ or -\n")
    try:
        mailbox.claim_name(wanted)
    except Err:
        return reply(f"* the name {wanted} is taken\n".encode())
    mailbox.broadcast(f"* {name} is now {wanted}\n".encode())
    name = wanted
    return reply(f"* you are now {wanted}\n".encode())


def who():
    flush()
    lines = []
    for peer in mailbox.peers():
        shown = peer.name if peer.name is not None else str(peer.id)
        me = " (you)" if peer.id == my_id else ""
        lines.append(f"* {peer.id} {shown}{me}\n")
    return reply("".join(lines).encode())


def line(data):
    if data.endswith(b"\r"):
        data = data[:-1]
    text = printable(data)
    if text.startswith("/nick "):
        return rename(text[6:].strip(SPACE))
    command = text.strip(SPACE)
    if command == "/who":
        return who()
    if command == "/version":
        flush()
        return reply(b"* chat-py\n")
    outgoing.extend(f"{name}: {text}\n".encode())
    if len(outgoing) >= BATCH:
        flush()
    return Next.CONTINUE


def received(data):
    global partial, discarding
    while data:
        newline = data.find(b"\n")
        ended = newline >= 0
        chunk = data[:newline] if ended else data
        data = data[newline + 1 :] if ended else b""
        if discarding:
            discarding = not ended
            continue
        partial.extend(chunk)
        # Overlong: a command is refused whole, text goes out in lines of MAX_LINE.
        refused = False
        while len(partial) > MAX_LINE or (not ended and len(partial) == MAX_LINE):
            if partial[:1] == b"/":
                partial = bytearray()
                discarding = not ended
                refused = True
                if reply(TOO_LONG.encode()) == Next.CLOSE:
                    return Next.CLOSE
                break
            cut = bytes(partial[:MAX_LINE])
            del partial[:MAX_LINE]
            if line(cut) == Next.CLOSE:
                return Next.CLOSE
        if ended and not refused:
            whole = bytes(partial)
            partial = bytearray()
            if line(whole) == Next.CLOSE:
                return Next.CLOSE
    return Next.CONTINUE


class Handler(exports.Handler):
    def init(self, info):
        global my_id, name
        my_id = info.id
        name = str(info.id)
        mailbox.broadcast(f"* {my_id} joined\n".encode())
        welcome = f"* welcome, you are {my_id}; /nick NAME renames you, /who lists the room\n"
        return reply(welcome.encode())

    def handle(self, event):
        if isinstance(event, Event_Data):
            next_ = received(event.value)
            # Whatever happens next, the lines already read reach the room.
            flush()
            return next_
        # Other members' lines and notices arrive formatted: pass them on.
        try:
            connection.send(event.value.payload)
            return Next.CONTINUE
        except Err:
            return Next.CLOSE

    def close(self, reason):
        mailbox.broadcast(f"* {name} left\n".encode())


class Handoff(exports.Handoff):
    """Handing the connection to another instance: a newer version at a hot swap, or the
    same plugin waking the connection from hibernation. The state is laid out as
    plugins/chat's (layout, discarding, name length u16 LE, name, partial line), so a chat in
    any of the languages takes over from any other."""

    def snapshot(self):
        named = name.encode()
        header = bytes([SNAPSHOT_LAYOUT, int(discarding)]) + len(named).to_bytes(2, "little")
        return header + named + bytes(partial)

    def resume(self, info, state):
        global my_id, name, partial, discarding
        if len(state) < 4:
            raise Err(f"a chat snapshot of {len(state)} bytes is too short")
        if state[0] != SNAPSHOT_LAYOUT:
            raise Err(f"unknown chat snapshot layout {state[0]}")
        length = int.from_bytes(state[2:4], "little")
        if len(state) < 4 + length:
            raise Err("a chat snapshot's name is cut short")
        try:
            name = state[4 : 4 + length].decode()
        except UnicodeDecodeError:
            raise Err("a chat name is not UTF-8") from None
        my_id = info.id
        discarding = state[1] != 0
        partial = bytearray(state[4 + length :])
        return Next.CONTINUE
