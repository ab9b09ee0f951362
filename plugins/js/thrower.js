// Test plugin: echoes, but a chunk that starts with `throw` makes `handle` throw an Error
// whose message quotes it — an uncaught exception must end only this connection, and reach
// the host's log with its message.

import { send } from 'shoal:plugin/connection@0.2.0';

const decoder = new TextDecoder();

export const handler = {
  init(_info) {
    return 'continue';
  },

  handle(event) {
    if (event.tag !== 'data') {
      return 'continue';
    }
    const text = decoder.decode(event.val);
    if (text.startsWith('throw')) {
      throw new Error(`thrown on request: ${text.trim()}`);
    }
    send(event.val);
    return 'continue';
  },

  close(_reason) {},
};
