"""Header handling end to end: trusted proxies, Max-Forwards, Location, Host, Via."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import send_request


class Redirector(BaseHTTPRequestHandler):
    """GET ?to=/path[&abs=1]: a 302 to that path, as a path or as its own absolute URL."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        to = query["to"][0]
        if "abs" in query:
            to = f"http://127.0.0.1:{self.server.server_port}{to}"
        self.send_response(302)
        self.send_header("Location", to)
        self.send_header("Via", "1.0 app")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    rec, redirect = upstream_module(), upstream_module(Redirector)
    port = rex_module.serve(f"""\
        - {{path: /rec, destination: "{rec.url}"}}
        - {{path: /host, destination: "{rec.url}", preserve_host: true}}
        - {{path: /opts, destination: "{rec.url}", methods: [GET, OPTIONS]}}
        - {{path: /plain, destination: "{redirect.url}"}}
        - {{path: /app, destination: "{redirect.url}", strip_prefix: true}}
        - {{path: /api, destination: "{redirect.url}/v2"}}
    """, """\
        trusted_proxies: [127.0.0.1/32]
        logging: {access: off}
        workers: 1
    """)
    return port, rec


def seen(port: int, request: bytes) -> dict:
    reply = send_request(port, request)
    assert reply.status == 200, reply.head
    return json.loads(reply.body)


def test_trusted_proxy_forwarding_fields_are_kept_and_extended(site):
    port, _ = site
    got = seen(port, b"GET /rec HTTP/1.1\r\nHost: internal:8080\r\n"
                     b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
                     b"X-Forwarded-Host: www.example\r\nX-Forwarded-Port: 443\r\n\r\n")
    h = got["headers"]
    assert h["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert (h["X-Forwarded-Proto"], h["X-Forwarded-Host"], h["X-Forwarded-Port"]) == (
        "https", "www.example", "443")


def test_path_and_query_go_upstream_byte_for_byte(site):
    port, _ = site
    target = b"/rec//a/./b/%7Euser;v=1/c%2Fd?q=%20&&x=%zz&y=a+b"
    got = seen(port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert got["path"] == target.decode()


def test_host_is_the_destination_unless_preserved(site):
    port, rec = site
    assert seen(port, b"GET /rec HTTP/1.1\r\nHost: pub.example\r\n\r\n")["headers"]["Host"] == (
        f"127.0.0.1:{rec.port}")
    assert seen(port, b"GET /host HTTP/1.1\r\nHost: pub.example\r\n\r\n")["headers"]["Host"] == (
        "pub.example")


def test_max_forwards_zero_is_answered_by_rex(site):
    port, rec = site
    before = len(rec.requests)
    reply = send_request(port, b"OPTIONS /opts HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n")
    assert reply.status == 200 and reply.headers["allow"] == "GET, HEAD, OPTIONS"
    reply = send_request(port, b"TRACE /rec HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n"
                       b"Cookie: secret=1\r\nX-Probe: 7\r\n\r\n")
    assert reply.status == 200 and reply.headers["content-type"] == "message/http"
    assert reply.body == b"TRACE /rec HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nX-Probe: 7\r\n\r\n"
    assert len(rec.requests) == before  # neither went upstream


def test_max_forwards_is_decremented_on_the_way(site):
    port, _ = site
    got = seen(port, b"OPTIONS /opts HTTP/1.1\r\nHost: a\r\nMax-Forwards: 3\r\n\r\n")
    assert got["method"] == "OPTIONS" and got["headers"]["Max-Forwards"] == "2"


@pytest.mark.parametrize(("path", "extra", "location"), [
    # Absolute URL naming the upstream: the public origin instead.
    (b"/plain/x?to=/plain/next&abs=1", b"", "http://pub.example:8000/plain/next"),
    # A trusted proxy in front: its scheme and host are the public ones.
    (b"/plain/x?to=/plain/next&abs=1", b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: www.x\r\n",
     "https://www.x/plain/next"),
    # strip_prefix: the prefix goes back in front.
    (b"/app/x?to=/login&abs=1", b"", "http://pub.example:8000/app/login"),
    # A base path maps back to the route's prefix, as a URL or as a path.
    (b"/api/x?to=/v2/items/1&abs=1", b"", "http://pub.example:8000/api/items/1"),
    (b"/api/x?to=/v2/items/1", b"", "/api/items/1"),
    # Anything else is the upstream's business.
    (b"/plain/x?to=https://elsewhere.example/", b"", "https://elsewhere.example/"),
    (b"/plain/x?to=/somewhere", b"", "/somewhere"),
])
def test_location_pointing_at_the_upstream_is_rewritten(site, path, extra, location):
    port, _ = site
    reply = send_request(port, b"GET " + path + b" HTTP/1.1\r\nHost: pub.example:8000\r\n" + extra
                 + b"\r\n")
    assert reply.status == 302
    assert reply.headers["location"] == location


def test_via_is_appended_on_responses(site):
    port, _ = site
    reply = send_request(port, b"GET /plain/x?to=/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.headers["via"] == "1.0 app, 1.1 rex"
