// Echo in JavaScript: every byte a client sends comes straight back, and so does every
// message from another connection. Built by scripts/build-js-plugins.sh with
// componentize-js; see plugins/js/README.md.

import { send } from 'shoal:plugin/connection@0.2.0';

export const handler = {
  // Step 1: keep every connection (throwing would refuse it).
  init(_info) {
    return 'continue';
  },

  // Step 2: send the bytes back; close when the client can take no more (`send` throws).
  handle(event) {
    const bytes = event.tag === 'data' ? event.val : event.val.payload;
    try {
      send(bytes);
      return 'continue';
    } catch {
      return 'close';
    }
  },

  // Step 3: nothing to say goodbye with.
  close(_reason) {},
};

// Step 4 (optional): an echo keeps no state, so any instance may take its connection over —
// at a hot swap, or when the connection wakes from hibernation (`hibernate_after`).
export const handoff = {
  snapshot() {
    return new Uint8Array(0);
  },

  resume(_info, _state) {
    return 'continue';
  },
};
