"""Forward auth through a real master and worker, against a small real auth service.

The service (a ThreadingHTTPServer in this process) lets a request in when it carries
the cookie ``session=good`` and names the user in ``X-User`` / ``X-Email``; it answers
a 302 to a login page otherwise, a 401 for ``session=expired``, and records the
sub-requests it got so the tests can see what Rex asked.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import Rex, Upstream, free_port, send_request, wait_for


class AuthService(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass  # keep test output clean

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": dict(self.headers.items()),
                                     "body": self.rfile.read(length) if length else b"",
                                     "peer": self.client_address[1]})
        cookie = self.headers.get("Cookie", "")
        if cookie == "session=slow":
            self.server.release.wait(10)  # answers only once the test has seen Rex give up
            self._answer(200, [], b"")
        elif cookie == "session=good":
            self._answer(200, [("X-User", "alice"), ("X-Email", "alice@example.com"),
                               ("X-Internal", "not copied")], b"")
        elif cookie == "session=expired":
            self._answer(401, [("WWW-Authenticate", 'Bearer error="invalid_token"')],
                         b"token expired\n")
        else:
            target = self.headers.get("X-Forwarded-Uri", "")
            self._answer(302, [("Location", f"https://login.example.com/?rd={target}"),
                               ("Set-Cookie", "state=abc; HttpOnly")], b"go and log in\n")

    def _answer(self, status: int, fields: list, body: bytes) -> None:
        self.send_response(status)
        for name, value in fields:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("forward")
    auth, api = Upstream(AuthService), Upstream()
    auth.server.release = threading.Event()
    rex = Rex(work, work / "home")
    rex.port = rex.serve(f"""\
        - path: /app
          destination: {api.url}
        - path: /public
          destination: {api.url}
          auth: false
        - path: /down
          destination: {api.url}
          auth: {{forward: {{url: "http://127.0.0.1:{free_port()}/check"}}}}
        - path: /slow
          destination: {api.url}
          timeouts: {{read: 300ms}}
          auth: {{forward: {{url: "{auth.url}/check"}}}}
    """, "workers: 1", instance=f"""\
        auth:
          forward:
            url: "{auth.url}/check?app=rex"
            copy_headers: [X-User, X-Email]
    """)
    rex.auth, rex.api = auth, api
    yield rex
    rex.stop()
    auth.server.release.set()
    auth.close()
    api.close()


def test_a_refusal_reaches_the_client_as_the_service_gave_it(site):
    reply = send_request(site.port, b"GET /app/page?q=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    assert reply.status == 302
    assert reply.headers["location"] == "https://login.example.com/?rd=/app/page?q=1"
    assert reply.headers["set-cookie"] == "state=abc; HttpOnly"
    assert reply.body == b"go and log in\n"
    asked = site.auth.requests[-1]
    assert (asked["method"], asked["path"]) == ("GET", "/check?app=rex")
    assert asked["headers"]["X-Forwarded-Uri"] == "/app/page?q=1"
    assert asked["headers"]["X-Forwarded-Method"] == "GET"
    assert asked["headers"]["X-Forwarded-Host"] == "shop.test"
    assert asked["headers"]["X-Forwarded-Proto"] == "http"
    assert asked["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert not site.api.requests

    reply = send_request(site.port, b"GET /app HTTP/1.1\r\nHost: a\r\nCookie: session=expired"
                                    b"\r\n\r\n")
    assert (reply.status, reply.body) == (401, b"token expired\n")
    assert reply.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_a_2xx_lets_the_request_in_with_the_listed_headers(site):
    body = b'{"order": 1}'
    reply = send_request(site.port, b"POST /app/orders HTTP/1.1\r\nHost: a\r\n"
                         b"Cookie: session=good\r\nX-User: mallory\r\nX-Email: m@evil.test\r\n"
                         b"X-Forwarded-Uri: /forged\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body)
    assert reply.status == 200
    asked = site.auth.requests[-1]
    # the original method and headers, without the body or the client's forwarding claims
    assert asked["method"] == "POST"
    assert asked["body"] == b""
    assert asked["headers"]["Content-Length"] == "0"
    assert asked["headers"]["Cookie"] == "session=good"
    assert asked["headers"]["X-Forwarded-Uri"] == "/app/orders"
    seen = site.api.requests[-1]
    assert seen["body"] == body.decode()
    assert seen["headers"]["X-User"] == "alice"  # the service's, never the client's
    assert seen["headers"]["X-Email"] == "alice@example.com"
    assert "X-Internal" not in seen["headers"]


def test_a_route_without_auth_never_asks_the_service(site):
    asked = len(site.auth.requests)
    assert send_request(site.port, b"GET /public HTTP/1.1\r\nHost: a\r\n\r\n").status == 200
    assert len(site.auth.requests) == asked


def test_an_unreachable_service_is_a_500_and_logged(site):
    reply = send_request(site.port, b"GET /down HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 500
    wait_for(lambda: "auth service http://127.0.0.1:" in site.output(), what="the error line")
    assert "/check: connect to" in site.output()


def test_a_service_slower_than_the_read_timeout_is_a_500(site):
    start = time.monotonic()
    reply = send_request(site.port, b"GET /slow HTTP/1.1\r\nHost: a\r\nCookie: session=slow"
                                    b"\r\n\r\n")
    waited = time.monotonic() - start
    site.auth.server.release.set()
    assert reply.status == 500
    # the route's timeouts.read (not the default 60 s), once: a timeout is not retried
    assert 0.25 < waited < 0.58, waited
    wait_for(lambda: "500 GET /slow: auth service" in site.output(), what="the error line")


def test_keep_alive_to_the_service(site):
    """Sub-requests reuse a pooled connection, as proxied requests do."""
    first = len(site.auth.requests)
    for _ in range(3):
        assert send_request(site.port, b"GET /app HTTP/1.1\r\nHost: a\r\nCookie: "
                                       b"session=good\r\n\r\n").status == 200
    assert len({r["peer"] for r in site.auth.requests[first:]}) == 1
