// The chat room of plugins/chat, in C: the same commands and the same lines on the wire.
//
// - on join, every other client gets `* <id> joined`;
// - each line a client sends reaches every other client as `<name>: <line>` (the name is
//   the connection id until `/nick`); the lines of one chunk travel as one message;
// - `/nick NAME` renames (others get `* <old> is now NAME`);
// - `/who` lists who is connected, one `* <id> <name>` line each;
// - `/version` names the plugin that serves the connection (`* chat-c`);
// - on leave, the others get `* <name> left`.
//
// Lines end with `\n` (a `\r` before it is dropped); a line longer than 4 KiB is cut there,
// but a command longer than that is refused whole. Control characters are relayed escaped
// (`\u{1b}`), bytes that are not UTF-8 as U+FFFD. A name is 1 to 32 ASCII letters, digits,
// `_` or `-`, unique in the room (the host checks and sets it at once).
//
// One instance serves one connection: the globals below are this connection's state. The
// `handoff` export hands it to another instance — a newer version at a hot swap, or the same
// plugin waking the connection from hibernation — laid out as plugins/chat's, so that a chat
// in any of the languages takes over from any other.

#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#define MAX_LINE 4096
#define BATCH (32 * 1024)
#define MAX_NAME 32

static const char TOO_LONG[] =
    "* a command line is at most 4096 bytes: that one was too long and is ignored\n";

/// A growable byte buffer.
typedef struct {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} buffer_t;

static void push(buffer_t *buffer, const void *bytes, size_t len) {
    if (buffer->len + len > buffer->cap) {
        size_t cap = buffer->cap ? buffer->cap : 64;
        while (cap < buffer->len + len) {
            cap *= 2;
        }
        uint8_t *grown = realloc(buffer->ptr, cap);
        if (!grown) {
            abort();
        }
        buffer->ptr = grown;
        buffer->cap = cap;
    }
    memcpy(buffer->ptr + buffer->len, bytes, len);
    buffer->len += len;
}

static void push_str(buffer_t *buffer, const char *text) { push(buffer, text, strlen(text)); }

static void push_u64(buffer_t *buffer, uint64_t value) {
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n) {
        push(buffer, &digits[--n], 1);
    }
}

static void push_hex(buffer_t *buffer, uint32_t value) {
    char digits[8];
    size_t n = 0;
    do {
        digits[n++] = "0123456789abcdef"[value % 16];
        value /= 16;
    } while (value);
    while (n) {
        push(buffer, &digits[--n], 1);
    }
}

// This connection.
static uint64_t id;
static buffer_t name;
/// The start of a line whose end has not arrived yet.
static buffer_t partial;
/// Dropping the rest of an overlong command, up to its newline.
static bool discarding;
/// Lines for the room, sent together at the end of the chunk (or sooner, see BATCH).
static buffer_t outgoing;

static void log_line(shoal_plugin_log_level_t level, const char *text) {
    plugin_string_t message = {(uint8_t *)text, strlen(text)};
    shoal_plugin_log_log(level, &message);
}

/// Send to this connection's client; close when it cannot take more.
static shoal_plugin_types_next_t reply(const void *bytes, size_t len) {
    plugin_list_u8_t list = {(uint8_t *)bytes, len};
    shoal_plugin_connection_send_error_t error;
    if (shoal_plugin_connection_send(&list, &error)) {
        return SHOAL_PLUGIN_TYPES_NEXT_CONTINUE;
    }
    log_line(SHOAL_PLUGIN_TYPES_LEVEL_WARN,
             error == SHOAL_PLUGIN_TYPES_SEND_ERROR_BUFFER_FULL ? "closing: cannot send: BufferFull"
                                                                : "closing: cannot send: Closed");
    return SHOAL_PLUGIN_TYPES_NEXT_CLOSE;
}

static shoal_plugin_types_next_t reply_buffer(buffer_t *text) {
    shoal_plugin_types_next_t next = reply(text->ptr, text->len);
    text->len = 0;
    return next;
}

static void broadcast(const buffer_t *text) {
    plugin_list_u8_t list = {text->ptr, text->len};
    shoal_plugin_mailbox_broadcast(&list);
}

/// Send the room the lines gathered so far.
static void flush(void) {
    if (outgoing.len) {
        broadcast(&outgoing);
        outgoing.len = 0;
    }
}

/// The length of the valid UTF-8 sequence at `bytes` (0 if there is none), its code point
/// in `*code`, and in `*subpart` how many bytes of an invalid one start like a valid one
/// (replaced together by one U+FFFD, as Rust's `from_utf8_lossy` does).
static size_t decode(const uint8_t *bytes, size_t len, uint32_t *code, size_t *subpart) {
    uint8_t lead = bytes[0];
    size_t need;
    uint8_t low = 0x80, high = 0xbf;
    if (lead < 0x80) {
        *code = lead;
        return 1;
    } else if (lead >= 0xc2 && lead <= 0xdf) {
        need = 1;
        *code = lead & 0x1f;
    } else if (lead >= 0xe0 && lead <= 0xef) {
        need = 2;
        *code = lead & 0x0f;
        low = lead == 0xe0 ? 0xa0 : 0x80;
        high = lead == 0xed ? 0x9f : 0xbf;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        need = 3;
        *code = lead & 0x07;
        low = lead == 0xf0 ? 0x90 : 0x80;
        high = lead == 0xf4 ? 0x8f : 0xbf;
    } else {
        *subpart = 1;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        uint8_t next = i < len ? bytes[i] : 0;
        if (i >= len || next < low || next > high) {
            *subpart = i;
            return 0;
        }
        *code = (*code << 6) | (next & 0x3f);
        low = 0x80;
        high = 0xbf;
    }
    return need + 1;
}

/// `bytes` as text another terminal can show: controls escaped, invalid UTF-8 as U+FFFD.
static void printable(buffer_t *out, const uint8_t *bytes, size_t len) {
    size_t at = 0;
    while (at < len) {
        uint32_t code = 0;
        size_t subpart = 0;
        size_t used = decode(bytes + at, len - at, &code, &subpart);
        if (!used) {
            push(out, "\xef\xbf\xbd", 3);
            at += subpart;
            continue;
        }
        if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) {
            if (code == '\t') {
                push_str(out, "\\t");
            } else if (code == '\r') {
                push_str(out, "\\r");
            } else {
                push_str(out, "\\u{");
                push_hex(out, code);
                push_str(out, "}");
            }
        } else {
            push(out, bytes + at, used);
        }
        at += used;
    }
}

static bool is_space(uint8_t byte) { return byte == ' ' || (byte >= '\t' && byte <= '\r'); }

/// `text` without leading and trailing ASCII white space.
static plugin_string_t trimmed(const uint8_t *text, size_t len) {
    while (len && is_space(text[0])) {
        text++;
        len--;
    }
    while (len && is_space(text[len - 1])) {
        len--;
    }
    plugin_string_t out = {(uint8_t *)text, len};
    return out;
}

static bool equals(plugin_string_t text, const char *word) {
    return text.len == strlen(word) && memcmp(text.ptr, word, text.len) == 0;
}

static shoal_plugin_types_next_t rename_to(plugin_string_t wanted) {
    // The lines before the rename go out under the old name, first.
    flush();
    bool valid = wanted.len >= 1 && wanted.len <= MAX_NAME;
    for (size_t i = 0; valid && i < wanted.len; i++) {
        uint8_t c = wanted.ptr[i];
        valid = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-';
    }
    buffer_t text = {0};
    if (!valid) {
        push_str(&text, "* a name is 1 to 32 letters, digits, _ or -\n");
    } else {
        shoal_plugin_mailbox_name_error_t error;
        if (!shoal_plugin_mailbox_claim_name(&wanted, &error)) {
            push_str(&text, "* the name ");
            push(&text, wanted.ptr, wanted.len);
            push_str(&text, " is taken\n");
        } else {
            push_str(&text, "* ");
            push(&text, name.ptr, name.len);
            push_str(&text, " is now ");
            push(&text, wanted.ptr, wanted.len);
            push_str(&text, "\n");
            broadcast(&text);
            text.len = 0;
            name.len = 0;
            push(&name, wanted.ptr, wanted.len);
            push_str(&text, "* you are now ");
            push(&text, wanted.ptr, wanted.len);
            push_str(&text, "\n");
        }
    }
    shoal_plugin_types_next_t next = reply_buffer(&text);
    free(text.ptr);
    return next;
}

static shoal_plugin_types_next_t who(void) {
    flush();
    shoal_plugin_mailbox_list_peer_t peers;
    shoal_plugin_mailbox_peers(&peers);
    buffer_t list = {0};
    for (size_t i = 0; i < peers.len; i++) {
        shoal_plugin_mailbox_peer_t *peer = &peers.ptr[i];
        push_str(&list, "* ");
        push_u64(&list, peer->id);
        push_str(&list, " ");
        if (peer->name.is_some) {
            push(&list, peer->name.val.ptr, peer->name.val.len);
        } else {
            push_u64(&list, peer->id);
        }
        if (peer->id == id) {
            push_str(&list, " (you)");
        }
        push_str(&list, "\n");
    }
    shoal_plugin_mailbox_list_peer_free(&peers);
    shoal_plugin_types_next_t next = reply_buffer(&list);
    free(list.ptr);
    return next;
}

static shoal_plugin_types_next_t line(const uint8_t *bytes, size_t len) {
    if (len && bytes[len - 1] == '\r') {
        len--;
    }
    buffer_t text = {0};
    printable(&text, bytes, len);
    shoal_plugin_types_next_t next = SHOAL_PLUGIN_TYPES_NEXT_CONTINUE;
    plugin_string_t command = trimmed(text.ptr, text.len);
    if (text.len >= 6 && memcmp(text.ptr, "/nick ", 6) == 0) {
        next = rename_to(trimmed(text.ptr + 6, text.len - 6));
    } else if (equals(command, "/who")) {
        next = who();
    } else if (equals(command, "/version")) {
        flush();
        next = reply("* chat-c\n", 9);
    } else {
        push(&outgoing, name.ptr, name.len);
        push_str(&outgoing, ": ");
        push(&outgoing, text.ptr, text.len);
        push_str(&outgoing, "\n");
        if (outgoing.len >= BATCH) {
            flush();
        }
    }
    free(text.ptr);
    return next;
}

static shoal_plugin_types_next_t received(const uint8_t *bytes, size_t len) {
    while (len) {
        const uint8_t *newline = memchr(bytes, '\n', len);
        size_t chunk = newline ? (size_t)(newline - bytes) : len;
        bool ended = newline != NULL;
        const uint8_t *rest = ended ? newline + 1 : bytes + len;
        len -= (size_t)(rest - bytes);
        const uint8_t *start = bytes;
        bytes = rest;
        if (discarding) {
            discarding = !ended;
            continue;
        }
        push(&partial, start, chunk);
        // Overlong: a command is refused whole, text goes out in lines of MAX_LINE.
        bool refused = false;
        while (partial.len > MAX_LINE || (!ended && partial.len == MAX_LINE)) {
            if (partial.ptr[0] == '/') {
                partial.len = 0;
                discarding = !ended;
                refused = true;
                if (reply(TOO_LONG, sizeof TOO_LONG - 1) == SHOAL_PLUGIN_TYPES_NEXT_CLOSE) {
                    return SHOAL_PLUGIN_TYPES_NEXT_CLOSE;
                }
                break;
            }
            if (line(partial.ptr, MAX_LINE) == SHOAL_PLUGIN_TYPES_NEXT_CLOSE) {
                return SHOAL_PLUGIN_TYPES_NEXT_CLOSE;
            }
            memmove(partial.ptr, partial.ptr + MAX_LINE, partial.len - MAX_LINE);
            partial.len -= MAX_LINE;
        }
        if (ended && !refused) {
            size_t whole = partial.len;
            partial.len = 0;
            if (line(partial.ptr, whole) == SHOAL_PLUGIN_TYPES_NEXT_CLOSE) {
                return SHOAL_PLUGIN_TYPES_NEXT_CLOSE;
            }
        }
    }
    return SHOAL_PLUGIN_TYPES_NEXT_CONTINUE;
}

bool exports_shoal_plugin_handler_init(exports_shoal_plugin_handler_conn_info_t *info,
                                       exports_shoal_plugin_handler_next_t *ret,
                                       plugin_string_t *err) {
    (void)err;
    id = info->id;
    exports_shoal_plugin_handler_conn_info_free(info);
    push_u64(&name, id);
    buffer_t text = {0};
    push_str(&text, "* ");
    push_u64(&text, id);
    push_str(&text, " joined\n");
    broadcast(&text);
    text.len = 0;
    push_str(&text, "* welcome, you are ");
    push_u64(&text, id);
    push_str(&text, "; /nick NAME renames you, /who lists the room\n");
    *ret = reply_buffer(&text);
    free(text.ptr);
    return true;
}

exports_shoal_plugin_handler_next_t
exports_shoal_plugin_handler_handle(exports_shoal_plugin_handler_event_t *event) {
    shoal_plugin_types_next_t next;
    if (event->tag == SHOAL_PLUGIN_TYPES_EVENT_DATA) {
        next = received(event->val.data.ptr, event->val.data.len);
        // Whatever happens next, the lines already read reach the room.
        flush();
    } else {
        // Other members' lines and notices arrive formatted: pass them on.
        plugin_list_u8_t *payload = &event->val.message.payload;
        next = reply(payload->ptr, payload->len);
    }
    exports_shoal_plugin_handler_event_free(event);
    return next;
}

void exports_shoal_plugin_handler_close(exports_shoal_plugin_handler_close_reason_t *reason) {
    exports_shoal_plugin_handler_close_reason_free(reason);
    buffer_t text = {0};
    push_str(&text, "* ");
    push(&text, name.ptr, name.len);
    push_str(&text, " left\n");
    broadcast(&text);
    free(text.ptr);
}

/// The layout of a snapshot, shared with plugins/chat (Rust), chat.js and chat.py.
#define SNAPSHOT_LAYOUT 1

// The state: layout, discarding, the name's length (u16 little-endian), the name, the
// partial line. The host frees what is returned.
void exports_shoal_plugin_handoff_snapshot(plugin_list_u8_t *ret) {
    size_t named = name.len > UINT16_MAX ? UINT16_MAX : name.len;
    buffer_t state = {0};
    uint8_t header[4] = {SNAPSHOT_LAYOUT, discarding, (uint8_t)(named & 0xff),
                         (uint8_t)(named >> 8)};
    push(&state, header, sizeof header);
    push(&state, name.ptr, named);
    push(&state, partial.ptr, partial.len);
    ret->ptr = state.ptr;
    ret->len = state.len;
}

bool exports_shoal_plugin_handoff_resume(exports_shoal_plugin_handoff_conn_info_t *info,
                                         plugin_list_u8_t *state,
                                         exports_shoal_plugin_handoff_next_t *ret,
                                         plugin_string_t *err) {
    id = info->id;
    exports_shoal_plugin_handoff_conn_info_free(info);
    const char *refusal = NULL;
    size_t length = state->len >= 4 ? (size_t)state->ptr[2] | (size_t)state->ptr[3] << 8 : 0;
    if (state->len < 4) {
        refusal = "a chat snapshot is too short";
    } else if (state->ptr[0] != SNAPSHOT_LAYOUT) {
        refusal = "unknown chat snapshot layout";
    } else if (state->len < 4 + length) {
        refusal = "a chat snapshot's name is cut short";
    } else {
        discarding = state->ptr[1] != 0;
        name.len = 0;
        push(&name, state->ptr + 4, length);
        partial.len = 0;
        push(&partial, state->ptr + 4 + length, state->len - 4 - length);
    }
    plugin_list_u8_free(state);
    if (refusal) {
        plugin_string_dup(err, refusal);
        return false;
    }
    *ret = SHOAL_PLUGIN_TYPES_NEXT_CONTINUE;
    return true;
}
