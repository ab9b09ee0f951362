"""Echo in Python: every byte a client sends comes straight back, and so does every message
from another connection. Built by scripts/build-python-plugins.sh with componentize-py; see
plugins/python/README.md."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import connection
from wit_world.imports.types import Event_Data, Next


class Handler(exports.Handler):
    def init(self, info):
        # Keep every connection (raising Err("why") would refuse it).
        return Next.CONTINUE

    def handle(self, event):
        data = event.value if isinstance(event, Event_Data) else event.value.payload
        try:
            connection.send(data)
        except Err:
            # The client can take no more.
            return Next.CLOSE
        return Next.CONTINUE

    def close(self, reason):
        pass


class Handoff(exports.Handoff):
    """An echo keeps no state, so any instance may take its connection over: at a hot swap,
    or when the connection wakes from hibernation (`hibernate_after`)."""

    def snapshot(self):
        return b""

    def resume(self, info, state):
        return Next.CONTINUE
