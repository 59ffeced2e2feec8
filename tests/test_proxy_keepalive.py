"""Keep-alive both sides: client timeouts, the upstream pool, stale connections, retries."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
from conftest import read_reply, recv_head, send_request, tcp_to, wait_for

CLOSED = threading.Event()  # an answer-then-close upstream has closed its socket


def recv_request(sock: socket.socket) -> bytes:
    """A whole request (head and Content-Length body) as received."""
    head = recv_head(sock)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return head + body


def keep_alive(sock):
    while True:
        try:
            recv_request(sock)
        except ConnectionError:
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def answer_then_close(sock):
    """Answers as if keeping the connection, then closes it: the pool's copy goes stale."""
    recv_request(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
    sock.close()
    CLOSED.set()


def answer_then_reset(sock):
    recv_request(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, not FIN
    CLOSED.set()


def fin_reached_rex(upstream_port: int) -> bool:
    """Rex's side of its connection to this upstream has had the FIN (CLOSE_WAIT).

    The upstream's close() returning does not mean the FIN is in Rex's socket yet:
    on a busy box loopback delivery can lag behind, and only a FIN already there is
    seen by the pool's peek.
    """
    states = [state for _port, state, _queued in tcp_to(upstream_port)]
    return "08" in states and "01" not in states


def read_then_close(sock):
    recv_request(sock)


BIG = b"b" * (300 * 1024)  # over relay.PUMP_MIN: relayed raw, past the response parser
SHAPES = {
    b"/shapes/cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Shape: cl\r\n\r\nhello",
    b"/shapes/chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n"),
    b"/shapes/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/shapes/big": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BIG), BIG),
}


def shapes(sock):
    """One keep-alive connection answering each path with its own framing."""
    while True:
        try:
            head = recv_request(sock)
        except ConnectionError:
            return
        method, path = head.split(b" ")[:2]
        reply = SHAPES[path]
        if method == b"HEAD":
            reply = reply.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        sock.sendall(reply)


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    raw = upstream_module.raw
    ups = {"ka": raw(keep_alive), "fin": raw(answer_then_close), "rst": raw(answer_then_reset),
           "bad": raw(read_then_close), "good": upstream_module(), "shapes": raw(shapes)}
    port = rex_module.serve(f"""\
        - {{path: /ka, destination: "{ups['ka'].url}"}}
        - {{path: /fin, destination: "{ups['fin'].url}"}}
        - {{path: /rst, destination: "{ups['rst'].url}"}}
        - {{path: /shapes, destination: "{ups['shapes'].url}"}}
        - path: /pair
          destination:
            - {{url: "{ups['bad'].url}", max_fails: 0}}
            - {{url: "{ups['good'].url}", backup: true}}
    """, """\
        timeouts: {header: 0.5, idle: 0.5}
        logging: {access: off}
        workers: 1
    """)
    return port, ups


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def get(port: int, path: str, method: str = "GET", body: bytes = b""):
    return send_request(port, b"%s %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                        % (method.encode(), path.encode(), len(body), body))


def test_keep_alive_then_idle_timeout(site):
    port, _ = site
    with connect(port) as s:
        f = s.makefile("rb")
        for _ in range(3):
            s.sendall(b"GET /ka HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_reply(f).body == b"ok"
        idle_from = time.monotonic()
        assert f.read() == b""  # Rex closes the idle connection...
        assert 0.4 < time.monotonic() - idle_from < 2  # ...after timeouts.idle


def test_http10_keep_alive_is_announced(site):
    port, _ = site
    with connect(port) as s:
        f = s.makefile("rb")
        for _ in range(2):
            s.sendall(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = read_reply(f)
            assert reply.body == b"ok" and reply.headers["connection"] == "keep-alive"


def test_incomplete_head_is_408_after_the_header_timeout(site):
    port, _ = site
    with connect(port) as s:
        started = time.monotonic()
        s.sendall(b"GET /ka HTTP/1.1\r\nHost: a\r\n")
        f = s.makefile("rb")
        assert read_reply(f).status == 408
        assert 0.4 < time.monotonic() - started < 2
        assert f.read() == b""


def test_trickled_head_still_times_out(site):
    port, _ = site
    stop = threading.Event()

    def trickle(s):
        for byte in b"GET /ka HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 100:
            if stop.wait(0.05):
                return
            try:
                s.send(bytes([byte]))
            except OSError:
                return  # Rex hung up: what this test wants

    with connect(port) as s:
        started = time.monotonic()
        sender = threading.Thread(target=trickle, args=(s,))
        sender.start()
        try:
            assert read_reply(s.makefile("rb")).status == 408
        finally:
            stop.set()
            sender.join()
        # The deadline covers the whole head, not each read (slowloris).
        assert time.monotonic() - started < 1.5


def test_silent_connection_is_closed_after_the_header_timeout(site):
    port, _ = site
    with connect(port) as s:
        started = time.monotonic()
        assert s.recv(100) == b""  # no 408 for a connection that never spoke
        assert 0.4 < time.monotonic() - started < 2


def test_upstream_connection_is_reused_across_client_connections(site):
    port, ups = site
    before = ups["ka"].connections
    for _ in range(5):
        assert get(port, "/ka").body == b"ok"
    assert ups["ka"].connections - before <= 1


def test_one_pooled_connection_carries_responses_of_every_framing(site):
    # Each pooled connection keeps its response parser for the next response
    # (when the parser saw the last one to its end): whatever came before, the
    # next response must parse as if on a new connection.
    port, ups = site
    up = ups["shapes"]
    before = up.connections
    with connect(port) as s:
        f = s.makefile("rb")
        for _ in range(2):
            for method, path in [("GET", "/shapes/cl"), ("GET", "/shapes/chunked"),
                                 ("HEAD", "/shapes/cl"), ("GET", "/shapes/empty"),
                                 ("HEAD", "/shapes/big"), ("GET", "/shapes/cl"),
                                 ("GET", "/shapes/big"), ("GET", "/shapes/chunked")]:
                s.sendall(f"{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                reply = read_reply(f, head_request=method == "HEAD")
                shape = path.rsplit("/", 1)[1]
                want = {"cl": b"hello", "chunked": b"abc", "empty": b"", "big": BIG}[shape]
                assert reply.status == (204 if shape == "empty" else 200), (method, path)
                assert reply.body == (b"" if method == "HEAD" else want), (method, path)
                if shape == "chunked":
                    assert reply.trailers == b"X-Sum: 3\r\n"
                if method == "HEAD" and shape in ("cl", "big"):
                    assert reply.headers["content-length"] == str(len(want))
    assert up.connections - before == 1  # all of it over one upstream connection


@pytest.mark.parametrize("kind", ["fin", "rst"])
def test_stale_pooled_connection_is_retried_on_a_fresh_one(site, kind):
    port, ups = site
    up = ups[kind]
    CLOSED.clear()
    assert get(port, f"/{kind}").body == b"fresh"
    assert CLOSED.wait(5)
    before = up.connections
    # The pooled connection is dead; the client must not notice.
    reply = get(port, f"/{kind}")
    assert reply.status == 200 and reply.body == b"fresh"
    assert up.connections == before + 1


def test_stale_connection_is_not_used_for_a_post(site):
    port, ups = site
    CLOSED.clear()
    assert get(port, "/fin").body == b"fresh"
    assert CLOSED.wait(5)
    # A POST cannot be replayed, so only a FIN already in Rex's socket (seen by the
    # pool's peek) can save it; one still in flight is nginx's race too.
    wait_for(lambda: fin_reached_rex(ups["fin"].port), 5, what="the FIN at Rex's end")
    reply = get(port, "/fin", "POST", b"data")
    assert reply.status == 200 and reply.body == b"fresh"


def test_idempotent_requests_go_to_the_next_upstream_others_do_not(site):
    port, ups = site
    bad, good = ups["bad"], ups["good"]
    reply = get(port, "/pair/x")
    assert reply.status == 200 and json.loads(reply.body)["method"] == "GET"
    before = bad.connections
    reply = get(port, "/pair/y", "POST", b"charge-once")
    # The first upstream read the POST and died: it may have acted on it.
    assert reply.status == 502
    assert bad.connections == before + 1
    assert all(r["method"] != "POST" for r in good.requests)
