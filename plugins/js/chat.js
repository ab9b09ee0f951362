// The chat room of plugins/chat, in JavaScript: the same commands and the same lines on the
// wire (see plugins/chat/src/lib.rs for what they are).
//
// Lines end with `\n` (a `\r` before it is dropped); a line longer than 4 KiB is cut there,
// but a command longer than that is refused whole. Control characters are relayed escaped
// (`\u{1b}`), bytes that are not UTF-8 as U+FFFD. A name is 1 to 32 ASCII letters, digits,
// `_` or `-`, unique in the room (the host checks and sets it at once).
//
// One instance serves one connection: the module's variables are this connection's state.

import { send } from 'shoal:plugin/connection@0.2.0';
import { broadcast, claimName, peers } from 'shoal:plugin/mailbox@0.2.0';
import { log } from 'shoal:plugin/log@0.2.0';

const MAX_LINE = 4096;
const BATCH = 32 * 1024;
const TOO_LONG = 'a command line is at most 4096 bytes: that one was too long and is ignored';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

let id = 0n;
let name = '';
/** The start of a line whose end has not arrived yet (bytes). */
let partial = new Uint8Array(0);
/** Dropping the rest of an overlong command, up to its newline. */
let discarding = false;
/** Lines for the room (UTF-8), sent together at the end of the chunk (or sooner, see BATCH). */
let outgoing = [];
let outgoingBytes = 0;

/** Send to this connection's client; close when it cannot take more. */
function reply(text) {
  try {
    send(encoder.encode(text));
    return 'continue';
  } catch (error) {
    const why = error.payload === 'buffer-full' ? 'BufferFull' : 'Closed';
    log('warn', `closing: cannot send: ${why}`);
    return 'close';
  }
}

/** Send the room the lines gathered so far. */
function flush() {
  if (outgoing.length > 0) {
    const joined = new Uint8Array(outgoingBytes);
    let at = 0;
    for (const bytes of outgoing) {
      joined.set(bytes, at);
      at += bytes.length;
    }
    broadcast(joined);
    outgoing = [];
    outgoingBytes = 0;
  }
}

/** `bytes` as text another terminal can show: controls escaped, invalid UTF-8 as U+FFFD. */
function printable(bytes) {
  let shown = '';
  for (const c of decoder.decode(bytes)) {
    const code = c.codePointAt(0);
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) {
      shown += c === '\t' ? '\\t' : c === '\r' ? '\\r' : `\\u{${code.toString(16)}}`;
    } else {
      shown += c;
    }
  }
  return shown;
}

/** Trim ASCII white space only, as the other languages' chats do. */
function trimmed(text) {
  return text.replace(/^[ \t\n\v\f\r]+|[ \t\n\v\f\r]+$/g, '');
}

function renameTo(wanted) {
  // The lines before the rename go out under the old name, first.
  flush();
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(wanted)) {
    return reply('* a name is 1 to 32 letters, digits, _ or -\n');
  }
  try {
    claimName(wanted);
  } catch {
    return reply(`* the name ${wanted} is taken\n`);
  }
  broadcast(encoder.encode(`* ${name} is now ${wanted}\n`));
  name = wanted;
  return reply(`* you are now ${wanted}\n`);
}

function who() {
  flush();
  let list = '';
  for (const peer of peers()) {
    const shown = peer.name ?? `${peer.id}`;
    const me = peer.id === id ? ' (you)' : '';
    list += `* ${peer.id} ${shown}${me}\n`;
  }
  return reply(list);
}

function line(bytes) {
  if (bytes.length > 0 && bytes[bytes.length - 1] === 0x0d) {
    bytes = bytes.subarray(0, bytes.length - 1);
  }
  const text = printable(bytes);
  if (text.startsWith('/nick ')) {
    return renameTo(trimmed(text.slice(6)));
  }
  const command = trimmed(text);
  if (command === '/who') {
    return who();
  }
  if (command === '/version') {
    flush();
    return reply('* chat-js\n');
  }
  const encoded = encoder.encode(`${name}: ${text}\n`);
  outgoing.push(encoded);
  outgoingBytes += encoded.length;
  if (outgoingBytes >= BATCH) {
    flush();
  }
  return 'continue';
}

function concat(a, b) {
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a, 0);
  joined.set(b, a.length);
  return joined;
}

function received(bytes) {
  while (bytes.length > 0) {
    const newline = bytes.indexOf(0x0a);
    const ended = newline >= 0;
    const chunk = ended ? bytes.subarray(0, newline) : bytes;
    bytes = ended ? bytes.subarray(newline + 1) : bytes.subarray(bytes.length);
    if (discarding) {
      discarding = !ended;
      continue;
    }
    partial = concat(partial, chunk);
    // Overlong: a command is refused whole, text goes out in lines of MAX_LINE.
    let refused = false;
    while (partial.length > MAX_LINE || (!ended && partial.length === MAX_LINE)) {
      if (partial[0] === 0x2f) {
        partial = new Uint8Array(0);
        discarding = !ended;
        refused = true;
        if (reply(`* ${TOO_LONG}\n`) === 'close') {
          return 'close';
        }
        break;
      }
      const cut = partial.slice(0, MAX_LINE);
      partial = partial.slice(MAX_LINE);
      if (line(cut) === 'close') {
        return 'close';
      }
    }
    if (ended && !refused) {
      const whole = partial;
      partial = new Uint8Array(0);
      if (line(whole) === 'close') {
        return 'close';
      }
    }
  }
  return 'continue';
}

/** The layout of a snapshot, shared with plugins/chat (Rust) and chat.py. */
const SNAPSHOT_LAYOUT = 1;

export const handler = {
  init(info) {
    id = info.id;
    name = `${id}`;
    broadcast(encoder.encode(`* ${id} joined\n`));
    return reply(`* welcome, you are ${id}; /nick NAME renames you, /who lists the room\n`);
  },

  handle(event) {
    if (event.tag === 'data') {
      const next = received(event.val);
      // Whatever happens next, the lines already read reach the room.
      flush();
      return next;
    }
    // Other members' lines and notices arrive formatted: pass them on.
    try {
      send(event.val.payload);
      return 'continue';
    } catch {
      return 'close';
    }
  },

  close(_reason) {
    broadcast(encoder.encode(`* ${name} left\n`));
  },
};

// Handing the connection to another instance: a newer version at a hot swap, or the same
// plugin waking the connection from hibernation. The state is laid out as plugins/chat's
// (layout, discarding, name length u16 LE, name, partial line), so a chat in any of the
// languages takes over from any other.
export const handoff = {
  snapshot() {
    const named = encoder.encode(name);
    const state = new Uint8Array(4 + named.length + partial.length);
    state.set([SNAPSHOT_LAYOUT, discarding ? 1 : 0, named.length & 0xff, named.length >> 8]);
    state.set(named, 4);
    state.set(partial, 4 + named.length);
    return state;
  },

  resume(info, state) {
    if (state.length < 4) {
      throw `a chat snapshot of ${state.length} bytes is too short`;
    }
    if (state[0] !== SNAPSHOT_LAYOUT) {
      throw `unknown chat snapshot layout ${state[0]}`;
    }
    const length = state[2] | (state[3] << 8);
    if (state.length < 4 + length) {
      throw "a chat snapshot's name is cut short";
    }
    id = info.id;
    discarding = state[1] !== 0;
    name = new TextDecoder('utf-8', { fatal: true }).decode(state.subarray(4, 4 + length));
    partial = state.slice(4 + length);
    return 'continue';
  },
};
