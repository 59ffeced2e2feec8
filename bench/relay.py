"""A bare relay: the least a Python proxy on gevent can do per request (the floor).

Not a proxy anyone should run: one upstream connection per client connection,
bodyless requests only, no header rewriting, no checks, no routing, no pool,
no timeouts, no metrics. It reads a request head, sends it upstream as it is,
reads the response head, finds its Content-Length and relays that many bytes.
The bench runs it beside nginx on the proxied 13 B scenario (``bench/run.py``)
and counts its Python calls per request (``bench/calls.py``): what Rex costs
above it is Rex's doing; what it costs itself is the interpreter's and gevent's.

``python -m bench.relay PORT UPSTREAM_PORT``
"""

from __future__ import annotations

import sys

from gevent import socket
from gevent.server import StreamServer

_END = b"\r\n\r\n"


def relay(client: socket.socket, upstream_port: int) -> None:
    up = socket.create_connection(("127.0.0.1", upstream_port))
    buf = b""
    try:
        while True:
            while _END not in buf:
                data = client.recv(65536)
                if not data:
                    return
                buf += data
            end = buf.index(_END) + 4
            up.sendall(buf[:end])
            buf = buf[end:]
            reply = up.recv(65536)
            while _END not in reply:
                reply += up.recv(65536)
            head_end = reply.index(_END) + 4
            length = int(reply.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            while len(reply) < head_end + length:
                reply += up.recv(65536)
            client.sendall(reply)
    finally:
        up.close()
        client.close()


def serve(port: int, upstream_port: int) -> StreamServer:
    server = StreamServer(("127.0.0.1", port), lambda sock, _addr: relay(sock, upstream_port))
    server.start()
    return server


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2])).serve_forever()
