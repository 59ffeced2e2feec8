"""HTTP/2 to clients, end to end: a real master, real sockets, real HTTP/2 clients.

One master serves a TLS instance (h2 by ALPN, the default), a plain one with
``http2: cleartext`` (h2c with prior knowledge) and a TLS one with ``http2:
false``. The clients are ``h2`` over raw sockets (``h2client``: it can send what
a hostile client would), httpx with HTTP/2, and curl where it speaks HTTP/2.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import trustme
from conftest import ROOT, Rex, free_port, recv_head, tcp_to, wait_for
from h2.errors import ErrorCodes
from h2client import Answer, H2Client
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

APPS = ROOT / "tests" / "apps"
BIG = os.urandom(2 * 1024 * 1024 + 17)  # many windows' worth, not a multiple of anything
GATE = 6  # requests the gate upstream holds until all have arrived


class Gate(BaseHTTPRequestHandler):
    """Answers only once ``GATE`` requests are in at the same time: proof of multiplexing."""

    protocol_version = "HTTP/1.1"
    barrier = threading.Barrier(GATE, timeout=10)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self.barrier.wait()
            body = b"together"
        except threading.BrokenBarrierError:
            body = b"alone"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Hold(BaseHTTPRequestHandler):
    """Counts each request and answers it late: work a reset stream should cancel."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        threading.Event().wait(3)
        self.send_response(204)
        self.end_headers()


def trailers_upstream(sock: socket.socket) -> None:
    while True:
        try:
            recv_head(sock)
        except (ConnectionError, OSError):
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def site(tmp_path_factory, ca, upstream_module):
    work = tmp_path_factory.mktemp("h2")
    public = work / "public"
    public.mkdir()
    (public / "hello.txt").write_text("hello over h2\n")
    (public / "big.bin").write_bytes(BIG)
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(work / "c.pem"))
    cert.private_key_pem.write_to_path(str(work / "k.pem"))
    api = upstream_module()
    gate = upstream_module(Gate)
    hold = upstream_module(Hold)
    raw = upstream_module.raw(trailers_upstream)
    tls, plain, off = free_port(), free_port(), free_port()
    routes = f"""\
      routes:
        - {{path: /api, destination: "{api.url}"}}
        - {{path: /stream, destination: "{api.url}", buffer_requests: false}}
        - {{path: /gate, destination: "{gate.url}"}}
        - {{path: /hold, destination: "{hold.url}"}}
        - {{path: /trailers, destination: "{raw.url}"}}
        - {{path: /gz, destination: "{api.url}", compress: {{min_length: 10}}}}
        - {{path: /raw, destination: "wsgi:rawapps:app"}}
"""
    rex = Rex(work, work / "home")
    rex.write(f"""\
server:
  instances:
    - port: {tls}
      host: 127.0.0.1
      public: ./public
      tls: {{cert: ./c.pem, key: ./k.pem}}
{routes}
    - port: {plain}
      host: 127.0.0.1
      public: ./public
      http2: cleartext
{routes}
    - port: {off}
      host: 127.0.0.1
      public: ./public
      tls: {{cert: ./c.pem, key: ./k.pem}}
      http2: false
workers: 1
pythonpath: ["{APPS}"]
timeouts: {{read: 2, idle: 2, header: 2}}
logging: {{access: ./access.log}}
trusted_proxies: [127.0.0.1/32]
""")
    rex.start(ports=(tls, plain, off))
    rex.tls, rex.plain, rex.off = tls, plain, off
    rex.api, rex.work = api, work
    yield rex
    rex.stop()


def context(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def client(site, ca, **kw) -> H2Client:
    return H2Client(site.tls, context(ca), **kw)


# -- negotiation -------------------------------------------------------------------------

def test_alpn_offers_h2_unless_the_instance_turns_it_off(site, ca):
    for port, want in ((site.tls, "h2"), (site.off, "http/1.1")):
        ctx = context(ca)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                             server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() == want


def test_cleartext_instance_serves_h2c_and_http11_on_one_port(site):
    with H2Client(site.plain) as c:
        a = c.get("/hello.txt")
        assert a.status == 200 and a.body == b"hello over h2\n"
    r = httpx.get(f"http://127.0.0.1:{site.plain}/hello.txt")
    assert r.http_version == "HTTP/1.1" and r.text == "hello over h2\n"


# -- every responder -------------------------------------------------------------------------

def test_every_responder_over_httpx(site, ca):
    with httpx.Client(http2=True, verify=context(ca), base_url=f"https://localhost:{site.tls}",
                      timeout=10) as h:
        r = h.get("/hello.txt")
        assert r.http_version == "HTTP/2" and r.text == "hello over h2\n"
        assert r.headers["content-length"] == "14" and r.headers["x-request-id"]
        r = h.get("/api/x?y=1", headers={"X-Thing": "1"})
        seen = r.json()
        assert seen["path"] == "/api/x?y=1" and seen["headers"]["x-thing"] == "1"
        # The upstream hears HTTP/1.1; the client's host (from :authority) is forwarded.
        assert seen["headers"]["X-Forwarded-Host"] == f"localhost:{site.tls}"
        assert "2.0 rex" in seen["headers"]["Via"]
        r = h.get("/raw/environ")
        assert r.status_code == 200 and r.json()["SERVER_PROTOCOL"] == "HTTP/2.0"
        r = h.get("/nothing-here")
        assert r.status_code == 404 and b"404" in r.content
        r = h.head("/big.bin")
        assert r.status_code == 200 and r.headers["content-length"] == str(len(BIG))
        assert r.content == b""
        r = h.get("/gz/data", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip" and r.json()["path"] == "/gz/data"


def test_a_trusted_proxys_request_id_is_kept_others_are_made(site, ca):
    with client(site, ca) as c:
        kept = c.get("/api/id", headers=[(b"x-request-id", b"from-the-lb-42")])
        made = c.get("/api/id")
    assert kept.headers[b"x-request-id"] == b"from-the-lb-42"
    assert json.loads(kept.body)["headers"]["X-Request-ID"] == "from-the-lb-42"
    assert made.headers[b"x-request-id"] not in (b"", b"from-the-lb-42")


def test_access_log_says_http_2(site, ca):
    with client(site, ca) as c:
        assert c.get("/hello.txt?logged=h2").status == 200
    log = site.work / "access.log"
    wait_for(lambda: b"logged=h2" in log.read_bytes(), what="the access log line")
    line = next(x for x in log.read_text().splitlines() if "logged=h2" in x)
    assert '"GET /hello.txt?logged=h2 HTTP/2.0" 200 14' in line


def test_curl_speaks_http2_to_rex(site, tmp_path):
    curl = shutil.which("curl")
    if curl is None or "HTTP2" not in subprocess.run([curl, "-V"], capture_output=True,
                                                     text=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    out = subprocess.run([curl, "-s", "--http2-prior-knowledge", "-w", " %{http_version}",
                          f"http://127.0.0.1:{site.plain}/hello.txt"],
                         capture_output=True, text=True, timeout=10).stdout
    assert out == "hello over h2\n 2"


# -- multiplexing and flow control -----------------------------------------------------------

def test_streams_run_at_once_on_one_connection(site, ca):
    with client(site, ca) as c:
        ids = [c.request(f"/gate/{n}") for n in range(GATE)]
        # The gate answers only when all GATE requests wait upstream at the same time.
        assert [c.answer(sid).body for sid in ids] == [b"together"] * GATE


def test_large_bodies_both_ways_under_flow_control(site, ca):
    with client(site, ca) as c:
        a = c.get("/big.bin")  # far past the 64 KiB windows: only WINDOW_UPDATEs move it
        assert a.status == 200 and a.body == BIG
        a = c.answer(c.request("/raw/echo", "POST", BIG))
        assert json.loads(a.body) == {"size": len(BIG),
                                      "sha256": hashlib.sha256(BIG).hexdigest()}
        body = BIG[:300_000]
        length = [(b"content-length", b"%d" % len(body))]  # the test upstream needs it
        for path in ("/api/up", "/stream/up"):  # buffered, and streamed to the upstream
            a = c.answer(c.request(path, "POST", body, headers=length))
            assert json.loads(a.body)["body"].encode("latin-1") == body, path


def test_wsgi_push_and_file_wrapper_over_h2(site, ca):
    big = site.work / "public" / "big.bin"
    with client(site, ca) as c:
        a = c.get("/raw/write")  # write() before the returned body: the push API
        assert a.status == 200 and a.body == b"written then returned"
        a = c.get(f"/raw/file?{big}")  # file_wrapper: a file region, read as windows allow
        assert a.status == 200 and a.body == BIG
        a = c.get("/raw/sleep?0")
        assert json.loads(a.body) == {"slept": "0"}


def test_proxied_trailers_reach_the_client(site, ca):
    with client(site, ca) as c:
        a = c.get("/trailers/x")
        assert a.body == b"abc" and a.trailers == {b"x-sum": b"3"}


def test_gzip_over_h2_decodes(site, ca):
    with client(site, ca) as c:
        a = c.get("/gz/y", headers=[(b"accept-encoding", b"gzip")])
        assert a.headers[b"content-encoding"] == b"gzip"
        assert json.loads(gzip.decompress(a.body))["path"] == "/gz/y"


# -- strictness: malformed requests are stream errors, never forwarded -----------------------

MALFORMED = {
    "upper-case name": [(b"X-Upper", b"1")],
    "connection field": [(b"connection", b"keep-alive")],
    "transfer-encoding": [(b"transfer-encoding", b"chunked")],
    "te other than trailers": [(b"te", b"gzip")],
    "value with edge space": [(b"x-a", b" padded")],
}


@pytest.mark.parametrize("why", sorted(MALFORMED))
def test_malformed_fields_reset_the_stream(site, ca, why):
    before = len(site.api.requests)
    with client(site, ca) as c:
        bad = c.answer(c.request("/api/bad", headers=MALFORMED[why]))
        assert bad.reset == ErrorCodes.PROTOCOL_ERROR
        # Only that stream: the connection goes on.
        assert c.get("/hello.txt").status == 200
    assert len(site.api.requests) == before


def test_malformed_pseudo_headers_reset_the_stream(site, ca):
    auth = b"localhost:%d" % site.tls
    cases = [
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", auth)],  # no :path
        [(b":method", b"GET"), (b":path", b"/api"), (b":scheme", b"https"),
         (b":path", b"/api")],  # repeated
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/api"),
         (b"x-a", b"1"), (b":authority", auth)],  # after a regular field
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/api"),
         (b":status", b"200")],  # a response pseudo-header
    ]
    before = len(site.api.requests)
    with client(site, ca) as c:
        for pseudo in cases:
            assert c.answer(c.request(pseudo=pseudo)).reset == ErrorCodes.PROTOCOL_ERROR
    assert len(site.api.requests) == before


def test_content_length_disagreeing_with_data_resets(site, ca):
    before = len(site.api.requests)
    with client(site, ca) as c:
        sid = c.request("/api/cl", "POST", b"0123456789", headers=[(b"content-length", b"4")])
        assert c.answer(sid).reset == ErrorCodes.PROTOCOL_ERROR
        sid = c.request("/api/cl", "POST", b"01", headers=[(b"content-length", b"4")])
        assert c.answer(sid).reset == ErrorCodes.PROTOCOL_ERROR
        assert c.get("/hello.txt").status == 200
    assert len(site.api.requests) == before


def test_bad_authority_is_a_400_page(site, ca):
    with client(site, ca) as c:
        pseudo = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a..b"),
                  (b":path", b"/api")]
        assert c.answer(c.request(pseudo=pseudo)).status == 400


# -- protections -----------------------------------------------------------------------------

def test_rapid_reset_ends_the_connection(site, ca):
    before = len(Hold.seen)
    with client(site, ca) as c:
        for _ in range(300):
            sid = c.request("/hold/reset")
            c.conn.reset_stream(sid)
        c.flush()
        c.until(lambda: c.terminated is not None)
        assert c.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # The resets cancelled the work: far fewer requests than streams reached the upstream.
    assert len(Hold.seen) - before < 100


@pytest.mark.parametrize("flood", ["ping", "settings"])
def test_control_frame_floods_end_the_connection(site, ca, flood):
    with client(site, ca) as c:
        frame = PingFrame(0) if flood == "ping" else SettingsFrame(0)
        if flood == "ping":
            frame.opaque_data = b"12345678"
        c.send_raw(frame.serialize() * 300)
        c.until(lambda: c.terminated is not None)
        assert c.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_continuation_flood_ends_the_connection(site, ca):
    with client(site, ca) as c:
        headers = HeadersFrame(1)
        headers.data = c.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"),
                                              (b":path", b"/"), (b":authority", b"localhost")])
        flood = headers.serialize()
        for _ in range(200):  # never END_HEADERS
            more = ContinuationFrame(1)
            more.data = b"\x40\x01a\x01b"  # a literal field a: b, over and over
            flood += more.serialize()
        try:
            c.send_raw(flood)
        except OSError:
            pass  # closed before all of it went
        c.until(lambda: c.terminated is not None or c.closed)


def test_refuses_streams_past_the_concurrency_limit(site, ca):
    # Sent before reading the server's SETTINGS, so the client's h2 does not hold
    # them back: 128 open bodies waiting, then one more.
    with client(site, ca) as c:
        ids = [c.request("/api/wait", "POST", end=False) for _ in range(129)]
        c.until(lambda: c.answers[ids[-1]].reset is not None or c.terminated is not None)
        assert c.answers[ids[-1]].reset == ErrorCodes.REFUSED_STREAM
        for sid in ids[:128]:
            assert c.answers[sid].reset is None


def test_a_window_never_opened_is_cut_after_the_read_timeout(site, ca):
    with client(site, ca, ack=False) as c:
        c.conn.update_settings({4: 0})  # SETTINGS_INITIAL_WINDOW_SIZE: nothing may come
        c.flush()
        a = c.answer(c.request("/big.bin"), timeout=10)
        assert a.reset is not None and not a.ended and a.body == b""


def test_idle_connection_gets_goaway(site, ca):
    with client(site, ca) as c:
        assert c.get("/hello.txt").status == 200
        c.until(lambda: c.terminated is not None, timeout=10)  # timeouts.idle: 2
        assert c.terminated.error_code == ErrorCodes.NO_ERROR


# -- graceful -------------------------------------------------------------------------------

def test_reload_sends_goaway_and_finishes_streams_in_flight(tmp_path, ca):
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    port = free_port()
    rex = Rex(tmp_path, tmp_path / "home")
    rex.write(f"""\
server:
  instances:
    - port: {port}
      host: 127.0.0.1
      tls: {{cert: ./c.pem, key: ./k.pem}}
      routes:
        - {{path: /raw, destination: "wsgi:rawapps:app"}}
workers: 1
pythonpath: ["{APPS}"]
graceful_timeout: 10
""")
    rex.start(ports=(port,))
    try:
        with H2Client(port, context(ca)) as c:
            sid = c.request("/raw/sleep?1.5")
            first = rex.workers()
            rex.signal(signal.SIGHUP)
            c.until(lambda: c.terminated is not None)
            assert c.terminated.error_code == ErrorCodes.NO_ERROR
            assert c.terminated.last_stream_id == sid
            a = c.answer(sid)  # the stream in flight still gets its whole answer
            assert a.ended and json.loads(a.body) == {"slept": "1.5"}
        wait_for(lambda: rex.workers() and rex.workers() != first, what="the new worker")
    finally:
        rex.stop()


def test_a_header_list_over_the_limit_ends_the_connection(site, ca):
    before = len(site.api.requests)
    with client(site, ca) as c:
        # Over limits.header_bytes (SETTINGS_MAX_HEADER_LIST_SIZE), which the client
        # was told: HPACK refuses to decode it, so no stream can be answered.
        c.request("/api/big-head", headers=[(b"x-big", b"b" * 70_000)])
        c.until(lambda: c.terminated is not None or c.closed)
        assert c.terminated is not None and c.terminated.error_code in (
            ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR,
            ErrorCodes.COMPRESSION_ERROR)
    assert len(site.api.requests) == before


def test_a_client_may_not_grow_the_hpack_table(site, ca):
    with client(site, ca) as c:
        headers = HeadersFrame(1)
        # A dynamic table size update to 65536 (RFC 7541 §6.3), over the 4096 Rex
        # allows (SETTINGS_HEADER_TABLE_SIZE), then an indexed :method GET.
        headers.data = b"\x3f\xe1\xff\x03" + b"\x82"
        headers.flags.add("END_HEADERS")
        headers.flags.add("END_STREAM")
        c.send_raw(headers.serialize())
        c.until(lambda: c.terminated is not None or c.closed)
        # h2 answers every HPACK decoding error with PROTOCOL_ERROR (RFC 9113 §4.3
        # says COMPRESSION_ERROR): either way the connection ends, nothing is served.
        assert c.terminated is not None
        assert c.terminated.error_code in (ErrorCodes.COMPRESSION_ERROR,
                                           ErrorCodes.PROTOCOL_ERROR)
    wait_for(lambda: "table size" in site.output().lower(), what="the error logged")


def test_a_stalled_request_body_gets_408(site, ca):
    before = len(site.api.requests)
    with client(site, ca) as c:
        sid = c.request("/api/slow-upload", "POST", b"part", end=False)  # then nothing
        a = c.answer(sid, timeout=10)  # timeouts.read: 2
        assert a.status == 408
        assert c.get("/hello.txt").status == 200  # the connection goes on
    assert len(site.api.requests) == before


def test_bodies_left_unread_give_their_window_back(site, ca):
    # Each answered (405: a static file takes no POST) without its body being read;
    # together four times the connection's window. If the window of what nobody read
    # were not given back, the connection would stall after a few.
    body = b"u" * 60_000
    with client(site, ca) as c:
        for _ in range(70):
            # Head and body in one write: the body is queued before the stream answers.
            sid = c.conn.get_next_available_stream_id()
            c.answers[sid] = Answer()
            c.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                      (b":authority", c.authority), (b":path", b"/hello.txt")])
            for at in range(0, len(body), 15_000):
                c.conn.send_data(sid, body[at:at + 15_000], end_stream=at + 15_000 >= len(body))
            c.flush()
            assert c.answer(sid).status in (404, 405)
        assert c.get("/hello.txt").status == 200


def _tcp_state(local_port: int, remote_port: int) -> str | None:
    """The state (hex code) of the TCP socket from ``local_port`` to ``remote_port``."""
    return next((state for port, state, _ in tcp_to(remote_port) if port == local_port), None)


def test_a_client_that_does_not_read_is_cut_after_the_read_timeout(site, ca):
    with client(site, ca, ack=False) as c:
        # Windows wide open, so only the socket (not flow control) holds Rex back.
        c.conn.update_settings({4: 2**31 - 1})  # SETTINGS_INITIAL_WINDOW_SIZE
        c.conn.increment_flow_control_window(2**30)
        c.flush()
        for _ in range(12):  # 24 MiB: more than the socket buffers on both ends hold
            c.request("/big.bin")
        port = c.sock.getsockname()[1]
        assert _tcp_state(site.tls, port) == "01"  # ESTABLISHED
        # Never read: Rex's writes block, and after timeouts.read (2 s) it shuts and
        # closes its end (its FIN waits behind the bytes we do not read: FIN_WAIT1).
        wait_for(lambda: _tcp_state(site.tls, port) != "01", timeout=5,
                 what="Rex to give up on the connection")
