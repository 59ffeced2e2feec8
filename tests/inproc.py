"""Rex's real HTTP/1.1 connection in this process, over a socket pair: one request, one verdict.

For tests of what responders, filters and request rules hand to the connection:
``exchange(respond, raw)`` runs a ``ClientConn`` (the worker's runtime context,
the real parser and response writer) on one end of a socket pair, sends ``raw``
from the other, lets ``respond(stream)`` answer, and reports what the client
received and what the connection decided. No master, no mocks of the network.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import gevent
import gevent.event
import gevent.socket

from rex_workers.config.model import Config, Logging
from rex_workers.http.urlpath import normalize
from rex_workers.serve.conn import ClientConn
from rex_workers.serve.runtime import Runtime


class Served:
    """What came of one request."""

    def __init__(self) -> None:
        self.out = b""  # every byte the client received
        self.keep_alive = True  # the connection's own verdict once the response was done
        self.errors: list[str] = []  # error log lines
        self.status = 0
        self.sent = 0  # body bytes, as the access log counts them


def runtime() -> Runtime:
    """A worker's context for connections, from an empty config (no access log)."""
    return Runtime(Config(path="", digest="", instances=(), logging=Logging(access=None)), {})


def exchange(respond: Callable, raw: bytes, ctx: Runtime | None = None) -> Served:
    """Send ``raw`` to a ClientConn whose requests ``respond(stream)`` answers."""
    ctx = ctx or runtime()
    served = Served()
    done = gevent.event.Event()

    def access(req, outcome, duration) -> None:
        served.status, served.sent = outcome.status, outcome.sent
        done.set()

    ctx.access = access
    ctx.log_error = served.errors.append

    class Dispatch:  # the worker's Listener, reduced to the one responder under test
        port, scheme = 8080, "http"

        def respond(self, stream) -> None:
            stream.request.path = normalize(stream.request.raw_path)
            respond(stream)

    server, client = gevent.socket.socketpair()
    conn = ClientConn(server, ("10.0.0.7", 5555), Dispatch(), ctx)
    loop = gevent.spawn(conn.serve)
    try:
        client.sendall(raw)
        assert done.wait(5), "no response"
        served.keep_alive = conn.keep_alive
        client.shutdown(socket.SHUT_WR)
        loop.join(5)
        client.settimeout(5)
        while data := client.recv(65536):
            served.out += data
    finally:
        loop.kill()
        client.close()
    return served
