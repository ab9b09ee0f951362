#!/usr/bin/env python3
"""A fixed client workload for bench/callgrind.sh, so that callgrind counts the same work for
every build.

    callgrind_client.py ADDR connection --ready FILE   300 × (connect, 64-byte echo, close)
    callgrind_client.py ADDR roundtrip --ready FILE    10 connections × 300 512-byte echoes
    callgrind_client.py ADDR roundtrip --ready FILE --conns 100
                                                       100 connections × 30 (3,000 echoes in
                                                       all, the connections served in turn)

It sets up what is not to be counted (opening the connections of `roundtrip`, one warm-up
echo each), creates FILE (`ready.…`), waits for its `go.…` twin, runs the workload, creates
`done.…`, and closes what it holds once `stop.…` appears.
"""

import socket
import sys
import time
from pathlib import Path


def echo(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(len(payload) - len(got))
        if not chunk:
            raise SystemExit("the server closed mid-echo")
        got += chunk
    if got != payload:
        raise SystemExit("the echo differs from what was sent")


def main() -> None:
    addr, workload = sys.argv[1], sys.argv[2]
    ready = Path(sys.argv[sys.argv.index("--ready") + 1])
    conns_wanted = int(sys.argv[sys.argv.index("--conns") + 1]) if "--conns" in sys.argv else 10
    if conns_wanted < 1 or 3000 % conns_wanted:
        raise SystemExit("--conns must divide 3000")
    host, port = addr.rsplit(":", 1)
    target = (host, int(port))
    conns = []
    if workload == "roundtrip":
        for _ in range(conns_wanted):
            conn = socket.create_connection(target)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            echo(conn, b"w" * 512)
            conns.append(conn)
    ready.touch()
    go = ready.with_name(ready.name.replace("ready.", "go.", 1))
    while not go.exists():
        time.sleep(0.02)
    if workload == "connection":
        for _ in range(300):
            conn = socket.create_connection(target)
            echo(conn, b"c" * 64)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):
                pass
            conn.close()
    else:
        payload = b"r" * 512
        for _ in range(3000 // conns_wanted):
            for conn in conns:
                echo(conn, payload)
    # Let the server finish with what was counted, say so, and keep the open connections
    # until the count has stopped (their closing is not part of a round trip).
    time.sleep(1.0)
    ready.with_name(ready.name.replace("ready.", "done.", 1)).touch()
    stop = ready.with_name(ready.name.replace("ready.", "stop.", 1))
    while not stop.exists():
        time.sleep(0.02)


if __name__ == "__main__":
    main()
