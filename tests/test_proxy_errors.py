"""Upstreams that refuse, stall, close early or send garbage: the right error, fast.

One master for the module, with small per-route timeouts, and raw-socket
upstreams that misbehave on purpose.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import free_port, read_head, read_reply, recv_head

STALL = threading.Event()  # set at teardown: releases every stalled upstream


def stall_before_answering(sock):
    recv_head(sock)
    STALL.wait(30)


def close_without_answering(sock):
    recv_head(sock)


def garbage(sock):
    recv_head(sock)
    sock.sendall(b"this is not HTTP\r\n\r\n")


def huge_head(sock):
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n")


def truncated_body(sock):
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)


def stall_mid_body(sock):
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    STALL.wait(30)


def upgrade_unasked(sock):
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\n\r\n")


class Blackhole:
    """A port whose accept queue is full: SYNs are dropped, connect() hangs."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass  # completes (or not) in the background: it only fills the queue
            self.fillers.append(s)

    def close(self) -> None:
        for s in [*self.fillers, self.listener]:
            s.close()


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    raw = upstream_module.raw
    blackhole = Blackhole()
    dead = free_port()
    ups = {"stall": raw(stall_before_answering).url, "close": raw(close_without_answering).url,
           "garbage": raw(garbage).url, "huge": raw(huge_head).url,
           "truncated": raw(truncated_body).url, "midstall": raw(stall_mid_body).url,
           "upgrade": raw(upgrade_unasked).url, "refused": f"http://127.0.0.1:{dead}",
           "blackhole": f"http://127.0.0.1:{blackhole.port}"}
    routes = "".join(f"""
        - path: /{name}
          destination: {url}
          timeouts: {{connect: 0.5, read: 0.5}}""" for name, url in ups.items())
    port = rex_module.serve(routes, """\
        logging: {access: off}
        workers: 1
    """)
    yield port
    STALL.set()
    blackhole.close()


def timed(port: int, path: str) -> tuple[object, float]:
    """(reply, seconds): one request on a fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        reply = read_reply(s.makefile("rb"))
        return reply, time.monotonic() - started


@pytest.mark.parametrize(("path", "status"), [
    ("/refused", 502),
    ("/close", 502),
    ("/garbage", 502),
    ("/huge", 502),
    ("/upgrade", 502),
])
def test_broken_upstreams_are_a_fast_502(site, path, status):
    reply, elapsed = timed(site, path)
    assert reply.status == status
    assert b"502" in reply.body and reply.headers["content-type"].startswith("text/html")
    assert elapsed < 0.4, "a 502 must not wait for a timeout"


def test_read_timeout_is_504(site):
    reply, elapsed = timed(site, "/stall")
    assert reply.status == 504
    assert 0.4 < elapsed < 3


def test_connect_timeout_is_504(site):
    reply, elapsed = timed(site, "/blackhole")
    assert reply.status == 504
    assert 0.4 < elapsed < 3


def test_upstream_dying_mid_body_closes_the_client_connection(site):
    with socket.create_connection(("127.0.0.1", site), timeout=10) as s:
        s.sendall(b"GET /truncated HTTP/1.1\r\nHost: a\r\n\r\n")
        f = s.makefile("rb")
        head = read_head(f)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 100" in head
        # Only what the upstream sent, then the close that tells the client it is short.
        assert f.read() == b"x" * 10


def test_upstream_stalling_mid_body_closes_after_the_read_timeout(site):
    with socket.create_connection(("127.0.0.1", site), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"GET /midstall HTTP/1.1\r\nHost: a\r\n\r\n")
        data = s.makefile("rb").read()
        assert data.endswith(b"\r\n\r\n" + b"x" * 10)
        assert 0.4 < time.monotonic() - started < 3


def test_error_keeps_the_client_connection_usable(site):
    with socket.create_connection(("127.0.0.1", site), timeout=10) as s:
        s.sendall(b"GET /refused HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
        f = s.makefile("rb")
        assert read_reply(f).status == 502
        assert read_reply(f).status == 404  # the 502 did not cost the connection
