"""Test plugin: echoes, but a chunk that starts with `raise` makes `handle` raise an exception
whose message quotes it — an uncaught exception must end only this connection, and reach the
host's log with its message."""

from wit_world import exports
from wit_world.imports import connection
from wit_world.imports.types import Event_Data, Next


class Handler(exports.Handler):
    def init(self, info):
        return Next.CONTINUE

    def handle(self, event):
        if not isinstance(event, Event_Data):
            return Next.CONTINUE
        text = event.value.decode("utf-8", errors="replace")
        if text.startswith("raise"):
            raise RuntimeError(f"raised on request: {text.strip()}")
        connection.send(event.value)
        return Next.CONTINUE

    def close(self, reason):
        pass
