"""Compression on the fly, through real sockets: proxied, static and WSGI responses.

One master for the module: a site with ``compress: true`` in front of an origin
(http.server, every case a path), a public directory and WSGI apps, plus a
route with ``compress: false``. Clients are requests (gzip and br decoded by
urllib3 and the brotli package), curl ``--compressed`` and raw sockets where
the wire itself is the point (framing, the moment a streamed event arrives).
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import socket
import subprocess
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import brotli
import pytest
import requests
from apps.compressapps import TEXT
from conftest import ROOT, Rex, read_reply, send_request

APPS = ROOT / "tests" / "apps"
JSON = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(1400)],
                  separators=(",", ":")).encode()[:64 * 1024]
SMALL = b'{"ok": true}'
# Hex digits: text that compresses only about 2x, so output held back would show.
BIG_BLOCK = random.Random(19).randbytes(1 << 19).hex().encode()
SSE_GATE = threading.Event()  # the origin sends its second event once this is set

# path -> (status, extra fields, body) the origin answers with (Content-Length added)
ANSWERS = {
    "/up/json": (200, [("Content-Type", "application/json")], JSON),
    "/up/small": (200, [("Content-Type", "application/json")], SMALL),
    "/up/png": (200, [("Content-Type", "image/png")], JSON),
    "/up/encoded": (200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                    gzip.compress(JSON)),
    "/up/range": (206, [("Content-Type", "application/json"),
                        ("Content-Range", f"bytes 0-{len(JSON) - 1}/{len(JSON) * 2}")], JSON),
    "/up/no-transform": (200, [("Content-Type", "application/json"),
                               ("Cache-Control", "public, no-transform")], JSON),
    "/up/etag": (200, [("Content-Type", "text/html; charset=utf-8"), ("ETag", '"v1"'),
                       ("Vary", "Origin"), ("Accept-Ranges", "bytes")], JSON),
    "/up/weak": (200, [("Content-Type", "text/css"), ("ETag", 'W/"v2"')], JSON),
    "/up/not-modified": (304, [("ETag", '"v1"')], b""),
    "/up/no-content": (204, [("Content-Type", "application/json")], b""),
    "/raw/json": (200, [("Content-Type", "application/json")], JSON),
}


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass  # the test output is not the place for an access log

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        if self.path == "/up/sse":
            return self._events()
        if self.path.startswith("/up/big"):
            return self._big(int(self.path.rpartition("=")[2]), "chunked" in self.path)
        status, fields, body = ANSWERS[self.path]
        self.send_response(status)
        for name, value in fields:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and status not in (204, 304):
            self.wfile.write(body)

    def _begin_chunked(self, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.wfile.flush()

    def _events(self) -> None:
        self._begin_chunked("text/event-stream")
        self._chunk(b"data: one\n\n")
        SSE_GATE.wait(10)
        self._chunk(b"data: two\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _big(self, mib: int, chunked: bool) -> None:
        block = BIG_BLOCK
        if chunked:
            self._begin_chunked("text/plain")
        else:  # a length: Rex hands the body over as a raw span, which the filter reads
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(mib << 20))
            self.end_headers()
        for _ in range(mib):
            if chunked:
                self._chunk(block)
            else:
                self.wfile.write(block)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("compress")
    public = work / "public"
    public.mkdir()
    (public / "data.json").write_bytes(JSON)
    (public / "tiny.txt").write_bytes(b"tiny")
    (public / "app.js").write_bytes(b"console.log('identity');\n" * 100)
    (public / "app.js.br").write_bytes(brotli.compress(b"console.log('precompressed');\n" * 100))
    (public / "big.txt").write_bytes(b"".join(b"%09d static text\n" % i for i in range(200_000)))
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    up = f"http://127.0.0.1:{origin.server_address[1]}"
    rex = Rex(work, work / "home")
    port = rex.serve(f"""\
        - path: /up
          destination: {up}
        - path: /raw
          destination: {up}
          compress: false
        - path: /app/text
          destination: wsgi:compressapps:text
        - path: /app/stream
          destination: wsgi:compressapps:stream
        - path: /app/file
          destination: wsgi:compressapps:served_file
    """, f"""\
        workers: 1
        pythonpath: ["{APPS}"]
        compress: {{min_length: 256}}
    """, instance="public: ./public")
    rex.url = f"http://127.0.0.1:{port}"
    rex.port = port
    rex.public = public
    yield rex
    rex.stop()
    origin.shutdown()
    origin.server_close()


def get(site, path: str, accept: str | None = "gzip, deflate, br", *, method: str = "GET",
        version: str = "1.1", extra: str = ""):
    """One raw request: the reply with its body as it came on the wire (not decoded)."""
    fields = f"Accept-Encoding: {accept}\r\n" if accept is not None else ""
    raw = f"{method} {path} HTTP/{version}\r\nHost: a\r\n{fields}{extra}\r\n".encode()
    return send_request(site.port, raw)


def decoded(reply) -> bytes:
    coding = reply.headers.get("content-encoding")
    if coding == "gzip":
        return gzip.decompress(reply.body)
    if coding == "br":
        return brotli.decompress(reply.body)
    return reply.body


# -- negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "coding"), [
    ("gzip, deflate, br", "br"),  # equal q: the server's preference (br first)
    ("gzip", "gzip"),
    ("gzip;q=1.0, br;q=0.5", "gzip"),
    ("br;q=0, gzip", "gzip"),  # q=0 refuses
    ("gzip;q=0", None),
    ("*", "br"),
    ("*;q=0.5, br;q=0", "gzip"),
    ("identity", None),
    ("gzip;q=0.5, identity;q=1", None),
    ("deflate", None),  # not offered
    ("", None),
    (None, None),
])
def test_accept_encoding_picks_the_coding(site, accept, coding):
    reply = get(site, "/up/json", accept)
    assert reply.status == 200
    assert reply.headers.get("content-encoding") == coding
    assert reply.headers["vary"] == "Accept-Encoding"  # for every client: the copies differ
    assert decoded(reply) == JSON


def test_a_compressed_answer_is_chunked_and_much_smaller(site):
    reply = get(site, "/up/json", "gzip")
    assert "content-length" not in reply.headers
    assert reply.headers["transfer-encoding"] == "chunked"
    assert len(reply.body) < len(JSON) / 4


def test_http_1_0_gets_a_close_delimited_body(site):
    reply = get(site, "/up/json", "gzip", version="1.0")
    assert reply.headers["connection"] == "close"
    assert "content-length" not in reply.headers and "transfer-encoding" not in reply.headers
    assert gzip.decompress(reply.body) == JSON


def test_requests_and_curl_decode_what_rex_sends(site):
    for coding in ("gzip", "br"):
        r = requests.get(site.url + "/up/json", headers={"Accept-Encoding": coding}, timeout=5)
        assert r.headers["Content-Encoding"] == coding and r.content == JSON
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (Debian package curl; .ci/run installs it)")
    out = subprocess.run(["curl", "-s", "--compressed", "-D", "-", site.url + "/up/json"],
                         capture_output=True, timeout=10, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-encoding: " in head.lower() and body == JSON


# -- what is never compressed ---------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/up/small",  # below min_length
    "/up/png",  # not a compressible type
    "/up/range",  # 206
    "/up/no-transform",
    "/raw/json",  # the route says compress: false
])
def test_left_alone(site, path):
    reply = get(site, path)
    assert "content-encoding" not in reply.headers
    assert "vary" not in reply.headers
    assert reply.body == ANSWERS[path][2]
    assert reply.headers["content-length"] == str(len(reply.body))


def test_an_encoded_answer_is_not_encoded_twice(site):
    reply = get(site, "/up/encoded")
    assert reply.headers["content-encoding"] == "gzip"
    assert gzip.decompress(reply.body) == JSON


def test_head_204_and_304(site):
    head = get(site, "/up/json", method="HEAD")
    assert head.headers["content-length"] == str(len(JSON))
    assert "content-encoding" not in head.headers
    assert get(site, "/up/no-content").headers.get("content-encoding") is None
    # A 304 says what the 200 would have: Vary, and the weak form of its ETag.
    not_modified = get(site, "/up/not-modified")
    assert not_modified.status == 304 and "content-encoding" not in not_modified.headers
    assert not_modified.headers["etag"] == 'W/"v1"'
    assert not_modified.headers["vary"] == "Accept-Encoding"


def test_the_head_of_a_compressed_answer(site):
    reply = get(site, "/up/etag", "gzip")
    assert reply.headers["content-encoding"] == "gzip"
    assert reply.headers["etag"] == 'W/"v1"'  # the bytes differ from the identity's
    assert reply.headers["vary"] == "Origin, Accept-Encoding"
    assert "accept-ranges" not in reply.headers
    weak = get(site, "/up/weak", "gzip")
    assert weak.headers["etag"] == 'W/"v2"'
    identity = get(site, "/up/etag", None)
    assert identity.headers["etag"] == '"v1"' and identity.headers["accept-ranges"] == "bytes"


# -- streaming ------------------------------------------------------------------------


def test_server_sent_events_arrive_at_once(site):
    SSE_GATE.clear()
    with socket.create_connection(("127.0.0.1", site.port), timeout=5) as s:
        s.sendall(b"GET /up/sse HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
        f = s.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += f.readline()
        assert b"Content-Encoding: gzip" in head
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = b""
        while b"data: one\n\n" not in text:  # before the origin sends the second event
            size = int(f.readline(), 16)
            text += inflate.decompress(f.read(size))
            f.read(2)
        SSE_GATE.set()
        while size := int(f.readline(), 16):
            text += inflate.decompress(f.read(size))
            f.read(2)
        assert text + inflate.flush() == b"data: one\n\ndata: two\n\n"


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_a_large_streamed_body_keeps_memory_bounded(site, framing):
    (worker,) = site.workers()
    before = _peak_kb(worker)
    with socket.create_connection(("127.0.0.1", site.port), timeout=30) as s:
        s.sendall(b"GET /up/big-%b?mib=48 HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n"
                  % framing.encode())
        reply = read_reply(s.makefile("rb"))
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert len(inflate.decompress(reply.body)) + len(inflate.flush()) == 48 << 20
    assert _peak_kb(worker) - before < 16 * 1024  # a compressor and a few blocks, not 48 MiB


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


# -- static files ------------------------------------------------------------------------


def test_static_files_compress_on_the_fly(site):
    reply = get(site, "/data.json", "gzip")
    assert reply.headers["content-encoding"] == "gzip"
    assert reply.headers["etag"].startswith('W/"')
    assert gzip.decompress(reply.body) == JSON
    big = get(site, "/big.txt", "br")  # read from the file in blocks, not with sendfile
    assert brotli.decompress(big.body) == (site.public / "big.txt").read_bytes()
    assert "content-encoding" not in get(site, "/tiny.txt").headers


def test_a_precompressed_sibling_wins_over_compressing(site):
    reply = get(site, "/app.js", "br, gzip")
    assert reply.headers["content-encoding"] == "br"
    assert brotli.decompress(reply.body).startswith(b"console.log('precompressed')")
    # No sibling for gzip: this client gets the identity file compressed on the fly.
    reply = get(site, "/app.js", "gzip")
    assert reply.headers["content-encoding"] == "gzip"
    assert gzip.decompress(reply.body).startswith(b"console.log('identity')")
    assert reply.headers["vary"] == "Accept-Encoding"


def test_a_range_of_a_static_file_is_sent_as_is(site):
    reply = get(site, "/data.json", "gzip", extra="Range: bytes=0-99\r\n")
    assert reply.status == 206 and reply.body == JSON[:100]
    assert "content-encoding" not in reply.headers


def test_a_revalidated_static_file_matches_its_weak_etag(site):
    etag = get(site, "/data.json", "gzip").headers["etag"]
    reply = get(site, "/data.json", "gzip", extra=f"If-None-Match: {etag}\r\n")
    assert reply.status == 304 and reply.headers["etag"] == etag


# -- WSGI ------------------------------------------------------------------------------


def test_wsgi_answers_are_compressed(site):
    reply = get(site, "/app/text", "br")
    assert reply.headers["content-encoding"] == "br" and brotli.decompress(reply.body) == TEXT
    assert reply.headers["etag"] == 'W/"w1"'
    stream = get(site, "/app/stream", "gzip")
    lines = gzip.decompress(stream.body).splitlines()
    assert len(lines) == 300 and json.loads(lines[-1])["n"] == 299
    path = site.public / "big.txt"
    served = get(site, f"/app/file?{path}", "gzip")
    assert gzip.decompress(served.body) == path.read_bytes()
