// Echo in C: every byte a client sends comes straight back, and so does every message from
// another connection. Built by plugins/c/build.sh (clang for wasm32-wasi, bindings from
// tools/wit-c); see plugins/c/README.md.

#include "plugin.h"

// Step 1: keep every connection. The host hands the arguments of an export over: free them.
bool exports_shoal_plugin_handler_init(exports_shoal_plugin_handler_conn_info_t *info,
                                       exports_shoal_plugin_handler_next_t *ret,
                                       plugin_string_t *err) {
    (void)err;
    exports_shoal_plugin_handler_conn_info_free(info);
    *ret = SHOAL_PLUGIN_TYPES_NEXT_CONTINUE;
    return true;
}

// Step 2: send the bytes back; close when the client can take no more.
exports_shoal_plugin_handler_next_t
exports_shoal_plugin_handler_handle(exports_shoal_plugin_handler_event_t *event) {
    plugin_list_u8_t *bytes = event->tag == SHOAL_PLUGIN_TYPES_EVENT_DATA
                                  ? &event->val.data
                                  : &event->val.message.payload;
    shoal_plugin_connection_send_error_t error;
    bool sent = shoal_plugin_connection_send(bytes, &error);
    exports_shoal_plugin_handler_event_free(event);
    return sent ? SHOAL_PLUGIN_TYPES_NEXT_CONTINUE : SHOAL_PLUGIN_TYPES_NEXT_CLOSE;
}

// Step 3: nothing to say goodbye with.
void exports_shoal_plugin_handler_close(exports_shoal_plugin_handler_close_reason_t *reason) {
    exports_shoal_plugin_handler_close_reason_free(reason);
}

// Step 4 (optional): an echo keeps no state, so any instance may take its connection over —
// at a hot swap, or when the connection wakes from hibernation (`hibernate_after`).
void exports_shoal_plugin_handoff_snapshot(plugin_list_u8_t *ret) {
    ret->ptr = NULL;
    ret->len = 0;
}

bool exports_shoal_plugin_handoff_resume(exports_shoal_plugin_handoff_conn_info_t *info,
                                         plugin_list_u8_t *state,
                                         exports_shoal_plugin_handoff_next_t *ret,
                                         plugin_string_t *err) {
    (void)err;
    exports_shoal_plugin_handoff_conn_info_free(info);
    plugin_list_u8_free(state);
    *ret = SHOAL_PLUGIN_TYPES_NEXT_CONTINUE;
    return true;
}
