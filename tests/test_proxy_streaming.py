"""Bodies stream both ways with bounded memory; the special message kinds pass intact.

One master for the module; the upstreams are raw-socket servers so every byte
they send and receive is under the test's control.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from conftest import read_head, read_reply, recv_head, rss_kb, send_request

MB = 1024 * 1024
BLOCK = b"r" * (256 * 1024)


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    first, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = first.split(" ")
    fields = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return method, path, fields


def read_chunked(f) -> tuple[bytes, bytes]:
    """(body, trailer lines) of a chunked body from a buffered socket file."""
    parts, trailers = [], b""
    while size := int(f.readline().split(b";")[0], 16):
        parts.append(f.read(size))
        f.read(2)
    while (line := f.readline()) != b"\r\n":
        trailers += line
    return b"".join(parts), trailers


def sink(sock: socket.socket) -> None:
    """Reads each request body as it comes and answers with its size."""
    while True:
        try:
            _, _, fields = parse_head(recv_head(sock))
        except ConnectionError:
            return
        left = int(fields.get("content-length", 0))
        while left:
            left -= len(sock.recv(min(left, 65536)))
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d"
                     % (len(str(int(fields.get("content-length", 0)))),
                        int(fields.get("content-length", 0))))


def source(sock: socket.socket) -> None:
    """GET /source/<MiB>[?chunked]: that many MiB, with Content-Length or chunked."""
    while True:
        try:
            _, path, _ = parse_head(recv_head(sock))
        except ConnectionError:
            return
        size = int(path.split("/")[2].split("?")[0]) * MB
        if path.endswith("?chunked"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(size // len(BLOCK)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK))
            sock.sendall(b"0\r\n\r\n")
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(BLOCK)):
                sock.sendall(BLOCK)


def echo(sock: socket.socket) -> None:
    """Streams the body back while still reading it: needs a full-duplex proxy."""
    _, _, fields = parse_head(recv_head(sock))
    left = int(fields["content-length"])
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % left)
    while left:
        data = sock.recv(min(left, 65536))
        left -= len(data)
        sock.sendall(data)


SSE_GATE = threading.Event()


def sse(sock: socket.socket) -> None:
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Cache-Control: no-cache\r\n\r\ndata: first\n\n")
    SSE_GATE.wait(10)  # the second event only once the client has the first
    sock.sendall(b"data: second\n\n")


def trailers(sock: socket.socket) -> None:
    """Records a chunked request as received, answers chunked with trailers."""
    f = sock.makefile("rb")
    head = read_head(f)
    body, tail = read_chunked(f)
    record = json.dumps({"head": head.decode(), "body": body.decode(),
                         "trailers": tail.decode()}).encode()
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                 b"%x\r\n%s\r\n0\r\nX-Checksum: abc123\r\n\r\n" % (len(record), record))


def statuses(sock: socket.socket) -> None:
    """GET /status/<kind>: 204, 304, 103 then 200, HEAD answers."""
    while True:
        try:
            method, path, _ = parse_head(recv_head(sock))
        except ConnectionError:
            return
        kind = path.rsplit("/", 1)[1]
        if kind == "204":
            sock.sendall(b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n")
        elif kind == "304":
            sock.sendall(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")
        elif kind == "103":
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        elif method == "HEAD":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Kind: head\r\n\r\n")
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n0\r\n\r\n")


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    raw = upstream_module.raw
    ups = {"sink": raw(sink), "source": raw(source), "echo": raw(echo), "sse": raw(sse),
           "trailers": raw(trailers), "status": raw(statuses), "continue": upstream_module()}
    port = rex_module.serve({f"/{name}": up.url for name, up in ups.items()}, """\
        limits: {body_bytes: 200m}
        logging: {access: off}
        workers: 1
    """)
    return port, ups, rex_module


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def warm_up(port: int) -> None:
    """One small request of each kind first, so lazy imports and buffers count as baseline."""
    with connect(port) as s:
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n"
                  + b"w" * MB + b"GET /source/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        f = s.makefile("rb")
        assert read_reply(f).body == b"1048576"
        assert len(read_reply(f).body) == MB


def test_100_mb_upload_streams_with_flat_memory(site):
    port, _, rex = site
    warm_up(port)
    worker = rex.workers()[0]
    base, peak = rss_kb(worker), 0
    with connect(port) as s:
        s.sendall(b"POST /sink/up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (100 * MB))
        for i in range(100 * MB // len(BLOCK)):
            s.sendall(BLOCK)
            if i % 8 == 0:
                peak = max(peak, rss_kb(worker))
        reply = read_reply(s.makefile("rb"))
    assert reply.status == 200 and reply.body == str(100 * MB).encode()
    assert peak - base < 16 * 1024, f"worker grew by {peak - base} KiB during the upload"


def test_100_mb_download_streams_with_backpressure(site):
    port, _, rex = site
    warm_up(port)
    worker = rex.workers()[0]
    base = rss_kb(worker)
    with connect(port) as s:
        s.sendall(b"GET /source/100 HTTP/1.1\r\nHost: a\r\n\r\n")
        f = s.makefile("rb", buffering=0)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += f.read(1)
        assert b"Content-Length: %d" % (100 * MB) in head
        got = len(f.read(MB))
        # Stop reading for a while: the upstream keeps writing, Rex must not buffer it.
        stalled_until = time.monotonic() + 0.5
        peak = base
        while time.monotonic() < stalled_until:
            peak = max(peak, rss_kb(worker))
        while got < 100 * MB:
            data = s.recv(1 << 20)
            assert data
            got += len(data)
            peak = max(peak, rss_kb(worker))
    assert peak - base < 16 * 1024, f"worker grew by {peak - base} KiB during the download"


def test_chunked_download_reaches_http10_and_http11_clients(site):
    port, _, _ = site
    reply = send_request(port, b"GET /source/8?chunked HTTP/1.1\r\nHost: a\r\n\r\n", timeout=20)
    assert reply.headers["transfer-encoding"] == "chunked" and len(reply.body) == 8 * MB
    reply = send_request(port, b"GET /source/2?chunked HTTP/1.0\r\n\r\n", timeout=20)
    # HTTP/1.0 has no chunked coding: the body ends when Rex closes (RFC 9112 §6.3).
    assert "transfer-encoding" not in reply.headers and reply.headers["connection"] == "close"
    assert len(reply.body) == 2 * MB


def test_upload_and_download_at_once_do_not_deadlock(site):
    port, _, _ = site
    size = 16 * MB  # far more than both sockets' buffers
    with connect(port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        sender = threading.Thread(target=lambda: [s.sendall(BLOCK)
                                                  for _ in range(size // len(BLOCK))])
        sender.start()
        reply = read_reply(s.makefile("rb"))
        sender.join(10)
    assert reply.status == 200 and len(reply.body) == size


def test_server_sent_events_arrive_before_the_upstream_finishes(site):
    port, _, _ = site
    SSE_GATE.clear()
    with connect(port) as s:
        s.settimeout(5)
        s.sendall(b"GET /sse HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
        f = s.makefile("rb")
        head = read_head(f)
        assert b"chunked" in head
        # The upstream is still holding its second event back; the first must be here.
        size = int(f.readline(), 16)
        assert f.read(size + 2) == b"data: first\n\n\r\n"
        assert not SSE_GATE.is_set()
        SSE_GATE.set()
        body, _ = read_chunked(f)
    assert body == b"data: second\n\n"


def test_chunked_request_and_response_with_trailers(site):
    port, _, _ = site
    with connect(port) as s:
        s.sendall(b"POST /trailers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                  b"Trailer: X-Sig\r\nTE: trailers\r\n\r\n"
                  b"4\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sig: s1\r\n\r\n")
        reply = read_reply(s.makefile("rb"))
    seen = json.loads(reply.body)
    assert seen["body"] == "wikipedia"
    assert "Transfer-Encoding: chunked" in seen["head"]
    assert seen["trailers"] == "X-Sig: s1\r\n"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.trailers == b"X-Checksum: abc123\r\n"


def test_expect_100_continue(site):
    port, _, _ = site
    with connect(port) as s:
        s.sendall(b"POST /continue HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        f = s.makefile("rb")
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert f.readline() == b"\r\n"
        s.sendall(b"hello")
        reply = read_reply(f)
    seen = json.loads(reply.body)
    assert reply.status == 200 and seen["body"] == "hello"
    assert "Expect" not in seen["headers"]  # answered by Rex, not passed on


def test_head_204_304_have_no_body_and_keep_the_connection(site):
    port, _, _ = site
    with connect(port) as s:
        s.sendall(b"HEAD /status/head HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /status/304 HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"v1\"\r\n\r\n"
                  b"GET /status/plain HTTP/1.1\r\nHost: a\r\n\r\n")
        f = s.makefile("rb")
        head = read_reply(f, head_request=True)
        assert head.status == 200 and head.headers["content-length"] == "1000"
        no_content = read_reply(f)
        assert no_content.status == 204 and no_content.headers["x-kind"] == "204"
        assert "content-length" not in no_content.headers
        assert "transfer-encoding" not in no_content.headers
        not_modified = read_reply(f)
        assert not_modified.status == 304 and not_modified.headers["etag"] == '"v1"'
        assert "transfer-encoding" not in not_modified.headers
        # Had any of those carried a body, this reply would be misread.
        assert read_reply(f).body == b"hello"


def test_early_hints_reach_http11_clients_only(site):
    port, _, _ = site
    reply = send_request(port, b"GET /status/103 HTTP/1.1\r\nHost: a\r\n\r\n", timeout=20)
    assert len(reply.interim) == 1 and reply.interim[0].startswith(b"HTTP/1.1 103 ")
    assert b"Link: </style.css>; rel=preload" in reply.interim[0]
    assert reply.status == 200 and reply.body == b"hello"
    reply = send_request(port, b"GET /status/103 HTTP/1.0\r\n\r\n", timeout=20)
    assert reply.interim == [] and reply.body == b"hello"

