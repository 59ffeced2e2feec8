"""Small files answered from their ready responses (rex_static/ready.py).

In this process (the static harness: Rex's real connection on 127.0.0.1, a
clock the test moves) the ready path must send exactly the bytes the normal
path sends, and let go of a file when the cache does; a forked Rex shows the
same end to end, with the real one-second TTL.
"""

from __future__ import annotations

import re

import gevent.socket
import pytest
from conftest import read_reply, send_request, wait_for
from test_static_harness import StaticServer, get

from rex_static.cache import TTLCache
from rex_static.ready import HotFile, Ready, SecondDate
from rex_static.site import SMALL_FILE
from rex_workers.config.model import StaticOptions
from rex_workers.serve.h1writer import H1Writer

PLAIN_JS = b"console.log('plain');\n" * 20
MISS = {"If-None-Match": '"no-such-tag"'}  # a precondition that fails: the normal path, a 200


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def public(tmp_path):
    root = tmp_path / "public"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "app.js").write_bytes(PLAIN_JS)
    (root / "app.js.br").write_bytes(b"BROTLI-BYTES")
    (root / "app.js.gz").write_bytes(b"GZIP-BYTES")
    return root


@pytest.fixture
def ready_calls(monkeypatch):
    """How many responses went out through ``respond_ready`` (the ready path)."""
    calls = []
    real = H1Writer.respond_ready

    def counting(self, *args):
        calls.append(args[0])
        return real(self, *args)

    monkeypatch.setattr(H1Writer, "respond_ready", counting)
    return calls


@pytest.fixture
def serve(public):
    servers: list[StaticServer] = []

    def make(**kw) -> StaticServer:
        server = StaticServer(str(public), kw.pop("opts", StaticOptions()), clock=Clock(), **kw)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def masked(raw: bytes) -> bytes:
    """A response with the values that differ between two requests blanked."""
    return re.sub(rb"(\r\n(?:Date|X-Request-ID): )[^\r]*", rb"\1-", raw)


def exchange(port: int, request: bytes) -> bytes:
    """One request on its own connection; the whole response (head and body) as sent.

    Cooperative sockets: the server may be in this process (the harness).
    """
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        reply = read_reply(sock.makefile("rb"), head_request=request.startswith(b"HEAD "))
    return reply.head + reply.body


# -- the same bytes --------------------------------------------------------------------
@pytest.mark.parametrize(("request_bytes", "ready"), [
    (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
    (b"GET /app.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n", True),
    (b"GET /app.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n", True),
    (b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n", True),
    # HTTP/1.0 heads are the strict reader's, which marks every request conditional.
    (b"GET /hello.txt HTTP/1.0\r\n\r\n", False),
    (b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
])
def test_ready_response_is_the_normal_one_byte_for_byte(serve, ready_calls, request_bytes,
                                                          ready):
    server = serve(opts=StaticOptions(cache_control="public, max-age=60"))
    cold = exchange(server.port, request_bytes)  # resolves the file: the normal path
    assert ready_calls == []
    hot = exchange(server.port, request_bytes)
    assert ready_calls == ([200] if ready else [])
    assert masked(hot) == masked(cold)
    # A failed precondition takes the normal path on a hot file too: still the same.
    forced = exchange(server.port, request_bytes.replace(
        b"\r\n\r\n", b"\r\nIf-None-Match: \"no-such-tag\"\r\n\r\n"))
    assert ready_calls == ([200] if ready else [])
    assert masked(forced) == masked(hot)
    assert b"\r\nDate: " in hot and b"\r\nX-Request-ID: " in hot and b"Cache-Control" in hot


def test_ready_keep_alive_and_close(serve, ready_calls):
    server = serve()
    get(server.port, "/hello.txt")
    with gevent.socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        f = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(f).body == b"hello, world\n"
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        last = read_reply(f)
        assert last.headers["connection"] == "close" and f.read() == b""  # closed after it
    assert len(ready_calls) == 4
    assert server.results[-4:] == [(200, 13)] * 4  # the access log and metrics see them


def test_conditional_and_range_on_a_hot_file(serve, ready_calls):
    server = serve()
    etag = get(server.port, "/hello.txt").headers["etag"]
    assert get(server.port, "/hello.txt").status == 200 and ready_calls == [200]
    assert get(server.port, "/hello.txt", {"If-None-Match": etag}).status == 304
    r = get(server.port, "/hello.txt", {"Range": "bytes=0-4"})
    assert (r.status, r.body, r.headers["content-range"]) == (206, b"hello", "bytes 0-4/13")
    assert get(server.port, "/hello.txt", {"If-Match": '"other"'}).status == 412
    assert get(server.port, "/hello.txt", {"Range": "bytes=99-"}).status == 416
    assert ready_calls == [200]


def test_other_spellings_and_methods_are_not_ready(serve, ready_calls):
    server = serve()
    get(server.port, "/hello.txt")
    assert get(server.port, "//hello.txt").body == b"hello, world\n"
    assert get(server.port, "/%68ello.txt").body == b"hello, world\n"
    assert list(server.site.hot) == ["/hello.txt"]  # one entry per file, not per spelling
    assert get(server.port, "/hello.txt", method="POST").status == 404
    assert ready_calls == []


# -- seeing changes -------------------------------------------------------------------
def test_change_grown_and_deleted_file_after_ttl(serve, public, ready_calls, sendfile_calls):
    server = serve()
    clock = server.site.clock
    assert get(server.port, "/hello.txt").body == b"hello, world\n"
    (public / "hello.txt").write_bytes(b"changed!\n")
    assert get(server.port, "/hello.txt").body == b"hello, world\n"  # within the TTL
    clock.now += 1.5
    r = get(server.port, "/hello.txt")
    assert r.body == b"changed!\n" and r.headers["content-length"] == "9"
    assert get(server.port, "/hello.txt").body == b"changed!\n" and len(ready_calls) == 2

    big = b"g" * (SMALL_FILE + 1)  # grown past the in-memory limit
    (public / "hello.txt").write_bytes(big)
    clock.now += 1.5
    assert get(server.port, "/hello.txt").body == big
    assert get(server.port, "/hello.txt").body == big
    assert "/hello.txt" not in server.site.hot and len(ready_calls) == 2
    assert sum(sendfile_calls) == 2 * len(big)  # from disk, both times

    (public / "hello.txt").write_bytes(b"small again\n")
    clock.now += 1.5
    get(server.port, "/hello.txt")
    assert get(server.port, "/hello.txt").body == b"small again\n" and len(ready_calls) == 3
    (public / "hello.txt").unlink()
    clock.now += 1.5
    assert get(server.port, "/hello.txt").status == 404
    assert "/hello.txt" not in server.site.hot


def test_filters_take_the_normal_path(serve, ready_calls, monkeypatch):
    """With a filter set for the response, the ready bytes are not used."""
    from rex_workers.serve.conn import ClientConn

    server = serve()
    seen = []
    real = ClientConn._handle

    def with_filter(self, req):
        self.filters = (lambda req, response: seen.append(response.status),)
        return real(self, req)

    monkeypatch.setattr(ClientConn, "_handle", with_filter)
    get(server.port, "/hello.txt")
    assert get(server.port, "/hello.txt").body == b"hello, world\n"
    assert seen == [200, 200] and ready_calls == []


# -- bounds: the pure pieces --------------------------------------------------------------
def test_cache_tells_of_every_value_it_drops():
    dropped = []
    clock = Clock()
    cache = TTLCache(1.0, 2, 100, clock, dropped.append)
    cache.put("a", "A", 10)
    cache.put("b", "B", 10)
    assert cache.expires("a") == 1001.0 and cache.expires("z") is None
    cache.put("c", "C", 10)  # over the entry count: the least recently used goes
    assert dropped == ["A"]
    cache.put("c", "C2", 10)  # replaced
    cache.discard("b")
    cache.put("d", "D", 95)  # over the byte budget
    assert dropped == ["A", "C", "B", "C2"] and len(cache) == 1


def test_ready_entries_go_with_their_cache_entries(serve, public):
    server = serve()
    site = server.site
    site.cache.max_entries = 2
    for name in ("a", "b", "c"):
        (public / f"{name}.txt").write_bytes(name.encode())
        assert get(server.port, f"/{name}.txt").body == name.encode()
    assert list(site.hot) == ["/b.txt", "/c.txt"]  # "/a.txt" left with its cache entry
    assert get(server.port, "/a.txt").body == b"a"
    assert list(site.hot) == ["/c.txt", "/a.txt"]
    site.cache.max_bytes = 1  # nothing fits any more: every entry leaves, and its view
    site.cache.put("x", None, 0)
    assert site.hot == {}


def test_ready_renders_the_fields_as_h1write_does():
    ready = Ready([(b"ETag", b'"1-2"'), (b"Content-Type", b"text/plain")], b"body")
    assert ready.fields == b'\r\nETag: "1-2"\r\nContent-Type: text/plain\r\n'
    assert (ready.body, ready.length, ready.size) == (b"body", 4, len(ready.fields))
    one = HotFile(5.0, b"/a", 0, {None: ready}, None)
    two = HotFile(5.0, b"/a", 0, {None: ready, "br": ready}, None)
    assert one.single is ready and two.single is None


def test_second_date_renews_when_the_second_is_over():
    wall = [1_700_000_000.25]
    date = SecondDate(lambda: wall[0])
    assert date.tick(50.0) == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert date.until == 50.75  # the rest of that wall-clock second, on the caller's clock
    wall[0] += 0.75
    assert date.tick(date.until) == b"Tue, 14 Nov 2023 22:13:21 GMT" and date.until == 51.75


# -- a forked Rex -------------------------------------------------------------------------
def test_forked_rex_serves_ready_files_and_sees_changes(rex, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"first\n")
    port = rex.serve("[]", instance=f"public: {www}")
    request = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    cold, hot = exchange(port, request), exchange(port, request)
    assert masked(hot) == masked(cold) and hot.endswith(b"\r\n\r\nfirst\n")
    head = send_request(port, b"HEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert masked(head.head) == masked(hot[:-len(b"first\n")])
    etag = send_request(port, request).headers["etag"]
    assert send_request(port, request.replace(
        b"\r\n\r\n", f"\r\nIf-None-Match: {etag}\r\n\r\n".encode())).status == 304
    ranged = send_request(port, request.replace(b"\r\n\r\n", b"\r\nRange: bytes=1-3\r\n\r\n"))
    assert (ranged.status, ranged.body) == (206, b"irs")

    (www / "a.txt").write_bytes(b"second version\n")
    wait_for(lambda: send_request(port, request).body == b"second version\n", timeout=10,
             what="the change after the TTL")
    (www / "a.txt").write_bytes(b"x" * (SMALL_FILE + 5))
    wait_for(lambda: len(send_request(port, request).body) == SMALL_FILE + 5, timeout=10,
             what="the grown file")
    (www / "a.txt").unlink()
    wait_for(lambda: send_request(port, request).status == 404, timeout=10,
             what="the deleted file's 404")
