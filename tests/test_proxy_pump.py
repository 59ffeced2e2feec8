"""Large Content-Length bodies relayed raw (proxy._pump): exact bytes, exact ends.

The upstreams are raw sockets, so the test decides what follows a body: stray
bytes that must never become the next response, or a close in the middle.
"""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import read_head, recv_head, send_request, tcp_to, wait_for

from rex_workers.proxy.relay import PUMP_MIN

SIZE = PUMP_MIN * 4 + 12345  # well past the pump threshold, not a multiple of its reads
BODY = bytes(range(256)) * (SIZE // 256) + b"z" * (SIZE % 256)
STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
client_has_body = threading.Event()
stray_sent = threading.Event()


def body_then_stray(sock: socket.socket) -> None:
    """Answers each request on the connection; after the first body, stray bytes."""
    first = True
    while True:
        try:
            recv_head(sock)
        except ConnectionError:
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE + BODY)
        if first:
            first = False
            client_has_body.wait(5)
            sock.sendall(STRAY)  # the test waits until they are in Rex's socket
            stray_sent.set()


def cut_short(sock: socket.socket) -> None:
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE + BODY[:SIZE // 2])
    sock.close()


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    stray = upstream_module.raw(body_then_stray)
    cut = upstream_module.raw(cut_short)
    port = rex_module.serve({"/stray": stray.url, "/cut": cut.url}, """\
        logging: {access: off}
        workers: 1
    """)
    return port, stray


def get(port: int, path: str):
    return send_request(port, f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), timeout=10)


def test_large_body_arrives_byte_for_byte_and_stray_bytes_stay_behind(site):
    port, stray = site
    reply = get(port, "/stray/1")
    assert reply.status == 200 and reply.body == BODY
    client_has_body.set()
    assert stray_sent.wait(5)  # else the next request could beat the stray bytes
    # And until they are in Rex's socket: sendall returning does not mean that on a busy
    # box. Bytes still on their way when the pool looks are every proxy's race.
    wait_for(lambda: any(queued >= len(STRAY) for _port, _state, queued in tcp_to(stray.port)),
             5, what="the stray bytes in Rex's socket")
    # The pooled connection now holds bytes nobody asked for: the next request must
    # get the upstream's real answer on a fresh connection, never "SMUGGLED".
    for i in range(3):
        reply = get(port, f"/stray/{i + 2}")
        assert reply.status == 200 and reply.body == BODY
    assert stray.connections >= 2


def test_upstream_closing_mid_body_cuts_the_client_short(site):
    port, _ = site
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
        f = s.makefile("rb")
        head = read_head(f)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % SIZE in head
        got = f.read()  # until Rex closes: it must, as the body can never be finished
    assert got == BODY[:SIZE // 2]
