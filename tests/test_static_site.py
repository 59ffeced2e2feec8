"""StaticSite end to end: real sockets on 127.0.0.1, a gevent StreamServer in this process."""

from __future__ import annotations

import errno
import os

import gevent
import gevent.event
import gevent.ssl
import pytest
import trustme
from test_static_harness import Client, RecordingStream, StaticServer, get

from rex_static import sendfile as rex_sendfile
from rex_workers.config.model import StaticOptions

BIG = 1024 * 1024 + 17  # above the in-memory limit: goes out with sendfile


@pytest.fixture
def public(tmp_path):
    root = tmp_path / "public"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "index.html").write_bytes(b"<h1>home</h1>\n")
    (root / "app.js").write_bytes(b"console.log('plain');\n" * 20)
    (root / "app.js.br").write_bytes(b"BROTLI-BYTES")
    (root / "app.js.gz").write_bytes(b"GZIP-BYTES")
    (root / "big.bin").write_bytes(bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256))
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>\n")
    (root / "files").mkdir()
    (root / "files" / "b.txt").write_bytes(b"b")
    (root / "files" / "a <&>.txt").write_bytes(b"a")
    (root / "files" / "sub").mkdir()
    (root / "files" / ".hidden").write_bytes(b"h")
    (root / ".env").write_bytes(b"SECRET=1\n")
    (root / ".well-known").mkdir()
    (root / ".well-known" / "security.txt").write_bytes(b"Contact: x\n")
    (root / "alias.txt").symlink_to("hello.txt")
    return root


@pytest.fixture
def serve(public):
    servers: list[StaticServer] = []

    def make(**kw) -> StaticServer:
        opts = kw.pop("opts", StaticOptions())
        server = StaticServer(str(kw.pop("root", public)), opts, **kw)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_get_small_file(serve):
    server = serve()
    r = get(server.port, "/hello.txt")
    assert r.status == 200
    assert r.body == b"hello, world\n"
    h = r.headers
    assert h["content-type"] == "text/plain; charset=utf-8"
    assert h["content-length"] == "13"
    assert h["accept-ranges"] == "bytes"
    assert h["server"] == "rex"
    assert h["date"].endswith(" GMT") and h["last-modified"].endswith(" GMT")
    assert h["etag"].startswith('"') and h["etag"].endswith('"')
    assert "connection" not in h and "vary" not in h and "cache-control" not in h
    assert server.results == [(200, 13)]


def test_keep_alive_head_and_close(serve):
    server = serve()
    with Client(server.port) as c:
        head = c.request("HEAD", "/big.bin")
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(BIG)
        # Had HEAD sent a body, this response would be misread.
        r = c.request("GET", "/hello.txt")
        assert r.body == b"hello, world\n"
        last = c.request("GET", "/hello.txt", {"Connection": "close"})
        assert last.headers["connection"] == "close"
        assert c.read_all() == b""  # and the server did close
    assert server.results == [(200, 0), (200, 13), (200, 13)]


def test_conditional_requests(serve):
    server = serve(opts=StaticOptions(cache_control="public, max-age=60"))
    first = get(server.port, "/hello.txt")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert first.headers["cache-control"] == "public, max-age=60"
    with Client(server.port) as c:
        r = c.request("GET", "/hello.txt", {"If-None-Match": etag})
        assert r.status == 304 and r.body == b""
        assert r.headers["etag"] == etag
        assert r.headers["cache-control"] == "public, max-age=60"
        assert "content-length" not in r.headers and "content-type" not in r.headers
        assert c.request("GET", "/hello.txt", {"If-Modified-Since": modified}).status == 304
        assert c.request("GET", "/hello.txt",
                         {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}).status == 200
        assert c.request("GET", "/hello.txt", {"If-None-Match": '"nope"'}).status == 200
        assert c.request("GET", "/hello.txt", {"If-Match": '"nope"'}).status == 412
        assert c.request("HEAD", "/hello.txt", {"If-None-Match": etag}).status == 304


@pytest.mark.parametrize("name", ["hello.txt", "big.bin"])
def test_ranges(serve, public, name):
    server = serve()
    data = (public / name).read_bytes()
    size = len(data)
    r = get(server.port, f"/{name}", {"Range": "bytes=2-5"})
    assert r.status == 206 and r.body == data[2:6]
    assert r.headers["content-range"] == f"bytes 2-5/{size}"
    assert r.headers["content-length"] == "4"
    r = get(server.port, f"/{name}", {"Range": "bytes=-3"})
    assert r.status == 206 and r.body == data[-3:]
    r = get(server.port, f"/{name}", {"Range": f"bytes={size - 1}-{size + 100}"})
    assert r.body == data[-1:]
    assert r.headers["content-range"] == f"bytes {size - 1}-{size - 1}/{size}"
    r = get(server.port, f"/{name}", {"Range": f"bytes={size}-"})
    assert r.status == 416 and r.headers["content-range"] == f"bytes */{size}"
    r = get(server.port, f"/{name}", {"Range": "bytes=0-1,4-5"})
    assert r.status == 200 and r.body == data
    etag = r.headers["etag"]
    r = get(server.port, f"/{name}", {"Range": "bytes=0-1", "If-Range": etag})
    assert r.status == 206 and r.body == data[:2]
    r = get(server.port, f"/{name}", {"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert r.status == 200 and r.body == data


def test_directories_index_and_redirect(serve):
    server = serve()
    r = get(server.port, "/docs?tab=2&x=%20")
    assert r.status == 301 and r.headers["location"] == "/docs/?tab=2&x=%20"
    assert get(server.port, "/docs/").body == b"<h1>docs</h1>\n"
    assert get(server.port, "/").body == b"<h1>home</h1>\n"
    assert get(server.port, "/files/").status == 404  # no index, no listing: not ours
    assert get(server.port, "/hello.txt/").status == 404


def test_listing(serve):
    server = serve(opts=StaticOptions(listing=True))
    r = get(server.port, "/files/")
    assert r.status == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.body.decode()
    assert page.index("a%20%3C%26%3E.txt") < page.index("b.txt") < page.index("sub/")
    assert "a &lt;&amp;&gt;.txt" in page and "<&>" not in page
    assert '<a href="sub/">sub/</a>' in page
    assert ".hidden" not in page


def test_spa_fallback(serve):
    server = serve(opts=StaticOptions(fallback="index.html"))
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    r = get(server.port, "/users/42", html)
    assert r.status == 200 and r.body == b"<h1>home</h1>\n"
    assert get(server.port, "/users/42").body == b"<h1>home</h1>\n"  # no extension
    assert get(server.port, "/user/jane.doe", html).status == 200
    assert get(server.port, "/missing.js", {"Accept": "*/*"}).status == 404
    assert get(server.port, "/missing.js").status == 404
    assert get(server.port, "/hello.txt").body == b"hello, world\n"  # real files first
    assert get(server.port, "/users/42", {"Range": "bytes=0-3"}).body == b"<h1>"
    assert get(serve().port, "/users/42", html).status == 404  # no fallback configured


@pytest.mark.parametrize(("accept_encoding", "coding", "body"), [
    ("gzip, deflate, br", "br", b"BROTLI-BYTES"),
    ("gzip", "gzip", b"GZIP-BYTES"),
    ("br;q=0.5, gzip", "gzip", b"GZIP-BYTES"),
    ("br;q=0, gzip;q=0", None, b"console.log('plain');\n" * 20),
    (None, None, b"console.log('plain');\n" * 20),
])
def test_precompressed(serve, accept_encoding, coding, body):
    server = serve()
    headers = {"Accept-Encoding": accept_encoding} if accept_encoding else {}
    r = get(server.port, "/app.js", headers)
    assert r.status == 200 and r.body == body
    assert r.headers.get("content-encoding") == coding
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    # Each encoding is its own representation, with its own validator.
    plain = get(server.port, "/app.js")
    assert (r.headers["etag"] == plain.headers["etag"]) is (coding is None)


def test_precompressed_off_and_no_vary_without_siblings(serve):
    server = serve(opts=StaticOptions(precompressed=False))
    r = get(server.port, "/app.js", {"Accept-Encoding": "br, gzip"})
    assert "content-encoding" not in r.headers and "vary" not in r.headers
    assert "vary" not in get(serve().port, "/hello.txt", {"Accept-Encoding": "br"}).headers


def test_dotfiles(serve):
    server = serve()
    assert get(server.port, "/.env").status == 404
    assert get(server.port, "/.well-known/security.txt").body == b"Contact: x\n"
    assert get(serve(opts=StaticOptions(dotfiles=True)).port, "/.env").body == b"SECRET=1\n"


def test_symlink_inside_root_is_served(serve):
    assert get(serve().port, "/alias.txt").body == b"hello, world\n"


def test_symlinked_root(serve, public, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(public)
    assert get(serve(root=link).port, "/hello.txt").body == b"hello, world\n"


def test_not_ours_for_other_methods(serve, public):
    server = serve()
    site = server.site
    stream = RecordingStream(_request("POST", b"/hello.txt"))
    assert site.handle(stream) is False and site.fallback(stream) is False
    assert stream.responses == []


def _request(method: str, raw_path: bytes):
    from rex_workers.http.request import Request

    return Request(method=method, target=raw_path, path=raw_path.decode(), query=b"",
                   version="1.1", headers=[], raw_path=raw_path)


# -- the pump -------------------------------------------------------------------
def test_large_file_goes_out_with_sendfile(serve, public, sendfile_calls):
    server = serve()
    r = get(server.port, "/big.bin")
    assert r.body == (public / "big.bin").read_bytes()
    assert sendfile_calls and sum(sendfile_calls) == BIG


class CountingSocket:
    """The server's socket with its send calls counted; everything else passes through."""

    def __init__(self, sock, sends: list) -> None:
        self._sock = sock
        self._sends = sends

    def send(self, data, *flags):
        sent = self._sock.send(data, *flags)
        self._sends.append(sent)
        return sent

    def sendall(self, data, *flags):
        self._sends.append(len(data))
        return self._sock.sendall(data, *flags)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_small_file_is_one_send_and_no_file_syscalls_when_hot(serve, monkeypatch,
                                                              sendfile_calls):
    server = serve()
    sends: list[int] = []
    monkeypatch.setattr(server, "sock_wrapper", lambda sock: CountingSocket(sock, sends))
    get(server.port, "/hello.txt")  # warms the cache
    sends.clear()
    opened: list[str] = []
    real_open, real_stat = os.open, os.stat
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: opened.append(p) or real_stat(p, *a, **k))
    r = get(server.port, "/hello.txt")
    assert r.body == b"hello, world\n"
    assert len(sends) == 1 and sends[0] == len(r.raw)  # head and body in one send
    assert [p for p in opened if str(p).startswith(server.site.root)] == []
    assert sendfile_calls == []


def test_sendfile_refused_falls_back_to_copy(serve, public, monkeypatch):
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refuse)
    r = get(serve().port, "/big.bin")
    assert calls and r.body == (public / "big.bin").read_bytes()


def test_tls_falls_back_to_read_and_send(serve, public, sendfile_calls):
    ca = trustme.CA()
    server_ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server = serve(ssl_context=server_ctx)
    client_ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)  # cooperative sockets
    ca.configure_trust(client_ctx)
    r = get(server.port, "/big.bin", ssl_context=client_ctx)
    assert r.status == 200 and r.body == (public / "big.bin").read_bytes()
    r = get(server.port, "/big.bin", {"Range": "bytes=1000-1999"}, ssl_context=client_ctx)
    assert r.body == (public / "big.bin").read_bytes()[1000:2000]
    assert sendfile_calls == []


def test_slow_client_does_not_block_others(serve, public, monkeypatch):
    """A client that stops reading parks its greenlet, not the worker."""
    (public / "huge.bin").write_bytes(b"\1" * (32 * 1024 * 1024))
    waiting = gevent.event.Event()
    real_wait = rex_sendfile.wait_write

    def wait_write(*args, **kw):
        waiting.set()
        return real_wait(*args, **kw)

    monkeypatch.setattr(rex_sendfile, "wait_write", wait_write)
    server = serve()
    stalled = Client(server.port)
    stalled.send("GET", "/huge.bin")
    # The socket buffers fill up and the pump waits for writability in the hub.
    assert waiting.wait(timeout=5), "sendfile never had to wait"
    with gevent.Timeout(5, AssertionError("a stalled download blocked the worker")):
        assert get(server.port, "/hello.txt").body == b"hello, world\n"
        assert get(server.port, "/big.bin", {"Range": "bytes=0-9"}).status == 206
    r = stalled.read_response()
    stalled.close()
    assert len(r.body) == 32 * 1024 * 1024 and r.body.count(b"\1") == len(r.body)


# -- the cache ---------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_sees_changes_after_ttl(serve, public):
    clock = Clock()
    server = serve(clock=clock)
    assert get(server.port, "/hello.txt").body == b"hello, world\n"
    (public / "hello.txt").write_bytes(b"changed!\n")
    # Within the TTL the cached bytes may still be served (documented, ≈1 s).
    assert get(server.port, "/hello.txt").body == b"hello, world\n"
    clock.now += 1.5
    r = get(server.port, "/hello.txt")
    assert r.body == b"changed!\n" and r.headers["content-length"] == "9"
    (public / "new.txt").write_bytes(b"new")
    assert get(server.port, "/new.txt").status == 200  # misses are re-resolved too


def test_cache_keeps_small_content_while_unchanged(serve, public, monkeypatch):
    clock = Clock()
    server = serve(clock=clock)
    get(server.port, "/hello.txt")
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda *a: reads.append(a) or real_pread(*a))
    clock.now += 5  # stale: revalidated by stat, same identity, same bytes kept
    assert get(server.port, "/hello.txt").body == b"hello, world\n"
    assert reads == []


def test_large_file_replaced_within_ttl_is_framed_right(serve, public):
    clock = Clock()
    server = serve(clock=clock)
    assert len(get(server.port, "/big.bin").body) == BIG
    replacement = public / "big.new"
    replacement.write_bytes(b"y" * (BIG + 1000))
    os.replace(replacement, public / "big.bin")  # an atomic deploy, inside the TTL
    r = get(server.port, "/big.bin")
    assert r.headers["content-length"] == str(BIG + 1000) and r.body == b"y" * (BIG + 1000)


def test_deleted_file_is_a_miss(serve, public):
    clock = Clock()
    server = serve(clock=clock)
    assert get(server.port, "/big.bin").status == 200
    (public / "big.bin").unlink()
    assert get(server.port, "/big.bin").status == 404  # within the TTL, open fails: a miss


def test_out_of_descriptors_is_503_not_404(serve, monkeypatch):
    server = serve()
    real_open = os.open

    def exhausted(path, *args, **kw):
        if str(path).startswith(server.site.root):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", exhausted)
    assert get(server.port, "/hello.txt").status == 503
    monkeypatch.setattr(os, "open", real_open)
    assert get(server.port, "/hello.txt").status == 200  # nothing wrong was cached
