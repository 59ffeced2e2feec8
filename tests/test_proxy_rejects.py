"""Malformed and ambiguous requests: refused with the right status, never forwarded.

The cases are data: ``tests/http/*.http`` (format in ``tests/http/README.md``).
One master serves every case; each goes over its own raw socket.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from conftest import read_reply, wait_for

CASES = Path(__file__).parent / "http"
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[rnt0\\])")
_BYTES = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}


def _unescape(match: re.Match) -> bytes:
    code = match.group(1)
    return bytes([int(code[1:], 16)]) if code[:1] == b"x" else _BYTES[code]


def load_case(path: Path) -> tuple[int, bytes]:
    """(expected status, raw request bytes) of one ``.http`` file."""
    lines = path.read_bytes().split(b"\n")
    expect = None
    while lines and lines[0].startswith(b"# "):
        key, _, value = lines.pop(0)[2:].partition(b": ")
        if key == b"expect":
            expect = int(value)
    assert expect is not None, f"{path.name}: no '# expect: NNN' line"
    if lines and lines[-1] == b"":
        lines.pop()  # the file's own final newline
    out = []
    for line in lines:
        end = b"\r\n"
        if line.endswith(b"\\") and not line.endswith(b"\\\\"):
            line, end = line[:-1], b""
        out.append(_ESCAPE.sub(_unescape, line) + end)
    return expect, b"".join(out)


def test_loader_conventions(tmp_path):
    case = tmp_path / "c.http"
    case.write_bytes(b"# why\n# expect: 400\nGET / HTTP/1.1\nX: a\\0\\x01\\\\\n\nbody\\")
    assert load_case(case) == (400, b"GET / HTTP/1.1\r\nX: a\0\x01\\\r\n\r\nbody")


DRAINED: list[bytes] = []  # what the draining upstream received, per connection


def drain(sock: socket.socket) -> None:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # Rex resets an upstream connection whose request body it cannot finish
    DRAINED.append(data)


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    api = upstream_module()
    drainer = upstream_module.raw(drain)
    # /drain streams request bodies as they come (the path without buffering); "/"
    # buffers them whole first, as every proxied route does by default.
    port = rex_module.serve(f"""\
        - {{path: /, destination: "{api.url}"}}
        - {{path: /drain, destination: "{drainer.url}", buffer_requests: false}}
    """, """\
        limits: {header_bytes: 4k, body_bytes: 64k}
        timeouts: {header: 3, read: 5}
        logging: {access: off}
        workers: 1
    """)
    return port, api


def exchange(port: int, data: bytes):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        f = s.makefile("rb")
        reply = read_reply(f)
        closed = f.read() == b""  # the server closed after its reply (or timed out: fails)
        return reply, closed


@pytest.mark.parametrize("name", sorted(p.stem for p in CASES.glob("*.http")))
def test_case(site, name):
    port, api = site
    expect, data = load_case(CASES / f"{name}.http")
    before = len(api.requests)
    reply, closed = exchange(port, data)
    assert reply.status == expect, reply.head
    if expect >= 400:
        assert reply.headers.get("connection") == "close"
        assert closed
        assert len(api.requests) == before, "a refused request reached the upstream"
    else:
        assert len(api.requests) == before + 1


def test_head_over_header_bytes_is_431(site):
    port, api = site
    before = len(api.requests)
    big = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 200) for i in range(30))
    reply, closed = exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")
    assert reply.status == 431 and closed
    assert len(api.requests) == before


def test_one_endless_field_line_is_431_not_buffered(site):
    port, _ = site
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ")
        try:
            for _ in range(64):  # 4 MiB if Rex kept reading: it must not
                s.sendall(b"v" * 65536)
        except OSError:
            pass  # Rex answered and closed while we were still sending: expected
        assert read_reply(s.makefile("rb")).status == 431


def test_declared_body_over_limit_is_413_before_any_byte(site):
    port, api = site
    before = len(api.requests)
    reply, closed = exchange(port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n"
                                   b"Expect: 100-continue\r\n\r\n")
    assert reply.status == 413 and not reply.interim and closed
    assert len(api.requests) == before


def post_chunked_over_limit(port: int, path: str) -> int:
    """The status of a POST whose chunked body runs past the 64 KiB limit."""
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  % path.encode())
        try:
            for _ in range(5):  # 80 KiB > 64 KiB
                s.sendall(chunk)
        except OSError:
            pass  # refused mid-body: the reply is what matters
        return read_reply(s.makefile("rb")).status


def test_chunked_body_over_limit_is_413(site):
    port, _ = site
    assert post_chunked_over_limit(port, "/drain") == 413
    # The upstream saw the start of the body as it streamed, never its end: Rex
    # hung up on it instead of sending the last chunk.
    seen = wait_for(lambda: DRAINED and DRAINED[-1], what="the upstream to be hung up on")
    assert seen.startswith(b"POST /drain HTTP/1.1\r\n")
    assert not seen.endswith(b"0\r\n\r\n") and len(seen) < 5 * 16384


def test_buffered_chunked_body_over_limit_is_413_and_no_upstream_hears_of_it(site):
    port, api = site
    before = len(api.requests)
    assert post_chunked_over_limit(port, "/buffered") == 413
    assert len(api.requests) == before  # the body was read here, and refused here


def test_target_over_limit_is_414(site):
    port, _ = site
    reply, closed = exchange(port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 414 and closed


def test_error_pages_are_small_html(site):
    port, _ = site
    reply, _ = exchange(port, b"GET /x HTTP/1.1\r\n\r\n")
    assert reply.headers["content-type"].startswith("text/html")
    assert b"400" in reply.body and len(reply.body) < 2048
