"""Header rules, security headers, CORS and the request id, through a real master.

Every responder gets the response rules (proxy, static files, WSGI, Rex's own
pages); the request rules reach an upstream and a WSGI app; the request id is
forwarded, returned and logged. The pure pieces (placeholders, Location safety,
Accept) are tested as data below the network tests.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT, Recorder, send_request, wait_for

from rex_workers.http.errorpages import prefers_json
from rex_workers.http.headerrules import security_headers
from rex_workers.http.message import Response
from rex_workers.http.request import Request
from rex_workers.http.template import Captures, Template, client_ip, location

APPS = ROOT / "tests" / "apps"


def get(port: int, path: str, *fields: str, method: str = "GET") -> object:
    extra = "".join(f"{f}\r\n" for f in fields)
    return send_request(port, f"{method} {path} HTTP/1.1\r\nHost: site.test\r\n{extra}"
                              "Connection: close\r\n\r\n".encode())


def fields(reply, name: str) -> list[str]:
    """Every value of a (possibly repeated) field in a reply's head."""
    lines = reply.head.decode("latin-1").split("\r\n")[1:]
    return [line.split(":", 1)[1].strip() for line in lines
            if line.lower().startswith(name.lower() + ":")]


class Failing(Recorder):
    """An upstream that answers /fail with its own 500 page and its own CORS field."""

    def _handle(self) -> None:
        if "/fail" not in self.path:
            super()._handle()
            return
        body = b"upstream oops"
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_OPTIONS = _handle


def test_header_rules_reach_every_responder(rex, tmp_path, upstream):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "hello.txt").write_text("hello\n")
    up = upstream()
    port = rex.serve(f"""\
        - path: /api
          destination: {up.url}
          headers:
            response: {{add: {{X-Route: api}}}}
        - path: /app
          destination: wsgi:rawapps:environ_view
        """, f"""\
        pythonpath: ["{APPS}"]
        logging: {{access: {tmp_path / "access.log"}}}
        headers:
          response: {{set: {{X-Env: prod}}, remove: [Server]}}
        """, instance="""\
        public: public
        security_headers: true
        headers:
          request:
            set: {X-Env: prod, X-Real-IP: "{client_ip}", X-Seen: "{scheme}://{host}{uri}"}
            add: {X-Trace: ["{request_id}", two]}
            remove: [Cookie]
          response: {set: {X-Frame-Options: DENY}}
        """)
    proxied = get(port, "/api/x?q=1", "Cookie: secret=1", "X-Request-ID: spoofed")
    seen = json.loads(proxied.body)["headers"]
    assert "Cookie" not in seen
    assert seen["X-Env"] == "prod" and seen["X-Real-IP"] == "127.0.0.1"
    assert seen["X-Seen"] == "http://site.test/api/x?q=1"
    rid = proxied.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", rid)  # the client's is not believed
    assert seen["X-Request-ID"] == rid and up.requests[-1]["headers"]["X-Trace"] == "two"
    app = json.loads(get(port, "/app/v").body)
    assert app["HTTP_X_ENV"] == "prod" and app["HTTP_X_TRACE"].endswith(", two")
    assert app["HTTP_X_REQUEST_ID"] == app["HTTP_X_TRACE"].split(",")[0]
    # Response rules: top level, instance and route, on proxy, WSGI, static and a 404 page.
    replies = {"proxy": proxied, "wsgi": get(port, "/app/v"), "static": get(port, "/hello.txt"),
               "page": get(port, "/nothing-here")}
    assert [r.status for r in replies.values()] == [200, 200, 200, 404]
    for name, reply in replies.items():
        assert reply.headers["x-env"] == "prod", name
        assert "server" not in reply.headers, name
        assert fields(reply, "X-Frame-Options") == ["DENY"], name  # the rule beats the default
        assert reply.headers["x-content-type-options"] == "nosniff", name
        assert "strict-transport-security" not in reply.headers, name  # plain HTTP
        assert len(fields(reply, "X-Request-ID")) == 1, name
    assert proxied.headers["x-route"] == "api" and "x-route" not in replies["static"].headers
    log = tmp_path / "access.log"
    wait_for(lambda: log.exists() and f"rid={rid}" in log.read_text(), what="the access line")


def test_a_trusted_proxy_s_request_id_is_kept(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "trusted_proxies: [127.0.0.1]")
    reply = get(port, "/x", "X-Request-ID: lb-1234")
    assert reply.headers["x-request-id"] == "lb-1234"
    assert json.loads(reply.body)["headers"]["X-Request-ID"] == "lb-1234"
    unusable = get(port, "/x", "X-Request-ID: " + "x" * 300)  # too long for a log line
    assert unusable.headers["x-request-id"] != "x" * 300


def test_cors(rex, upstream):
    up = upstream(Failing)
    port = rex.serve(f"""\
        - path: /api
          destination: {up.url}
          methods: [POST]
        - path: /open
          destination: {up.url}
          cors: {{origins: "*"}}
        - path: /closed
          destination: {up.url}
          cors: false
        """, instance="""\
        cors:
          origins: [https://app.example.com]
          headers: [Content-Type, Authorization]
          expose: [X-Total]
          credentials: true
          max_age: 10m
        """)
    app = "Origin: https://app.example.com"
    preflight = get(port, "/api/items", app, "Access-Control-Request-Method: POST",
                    method="OPTIONS")
    assert preflight.status == 204 and not up.requests  # answered by Rex
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["access-control-allow-headers"] == "Content-Type, Authorization"
    assert preflight.headers["access-control-max-age"] == "600"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["vary"] == "Origin"
    evil = get(port, "/api/items", "Origin: https://evil.example",
               "Access-Control-Request-Method: POST", method="OPTIONS")
    assert evil.status == 403 and "access-control-allow-origin" not in evil.headers
    # An actual request: the listed origin is named, any other is not (nor the upstream's *).
    ok = get(port, "/api/fail", app, method="POST")
    assert ok.status == 500 and ok.headers["access-control-allow-origin"] == \
        "https://app.example.com"
    assert ok.headers["access-control-expose-headers"] == "X-Total"
    other = get(port, "/api/fail", "Origin: https://evil.example", method="POST")
    assert "access-control-allow-origin" not in other.headers and other.headers["vary"] == "Origin"
    # Route scopes: "*" without credentials, and cors switched off (the upstream answers).
    star = get(port, "/open/x", "Origin: https://anyone.example")
    assert star.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in star.headers
    passed = get(port, "/closed/x", app, "Access-Control-Request-Method: GET", method="OPTIONS")
    assert passed.status == 200 and up.requests[-1]["method"] == "OPTIONS"
    assert "access-control-allow-origin" not in passed.headers


def test_placeholders_and_their_trust() -> None:
    req = Request("GET", b"/a%20b/c?x=1", "/a b/c", b"x=1", "1.1",
                  [(b"X-Forwarded-For", b"203.0.113.9, 10.0.0.2"),
                   (b"X-Forwarded-Proto", b"https")],
                  host="site.test", client_addr=("10.0.0.1", 5), request_id=b"id-1")
    trusted = {"10.0.0.1", "10.0.0.2"}.__contains__
    text = "{client_ip} {scheme} {host} {path} {query} {uri} {request_id}"
    assert Template(text).render(req, trusted) == \
        "203.0.113.9 https site.test /a%20b/c x=1 /a%20b/c?x=1 id-1"
    assert Template(text).render(req, lambda ip: False).split()[:2] == ["10.0.0.1", "http"]
    assert client_ip(req, {"10.0.0.1"}.__contains__) == "10.0.0.2"


@pytest.mark.parametrize(("pattern", "path", "captured"), [
    ("/old/**", "/old/a/b/", ("a/b/",)),
    ("/old/**", "/old", ("",)),
    ("/users/*/avatar", "/users/42/avatar", ("42",)),
    ("/assets/*.js", "/assets/app.js", ("app",)),
    ("/a/**/b/*", "/a/x/y/b/z/more", ("x/y", "z")),
    ("/docs", "/docs/a", ()),
    ("/**", "/a b\\c", ("a%20b%5Cc",)),
])
def test_captures(pattern: str, path: str, captured: tuple) -> None:
    assert Captures(pattern)(path) == captured


@pytest.mark.parametrize(("text", "safe"), [
    ("/new/a b", "/new/a%20b"),
    ("https://x.example/\u00e9", "https://x.example/%C3%A9"),
    ("/x\r\nSet-Cookie: a=b", "/x%0D%0ASet-Cookie:%20a=b"),
    ("//evil.example/", "/evil.example/"),
    ("/\\evil.example", "/evil.example"),
])
def test_location_is_made_safe(text: str, safe: str) -> None:
    assert location(text) == safe


@pytest.mark.parametrize(("accept", "json_"), [
    ("application/json", True),
    ("application/json, text/plain, */*", True),  # axios
    ("application/problem+json", True),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser
    ("*/*", False),
    ("text/html;q=0.5, application/json;q=0.9", True),
    ("application/json;q=0.4, text/html", False),
    ("application/json;q=0", False),
])
def test_prefers_json(accept: str, json_: bool) -> None:
    req = Request("GET", b"/", "/", b"", "1.1", [(b"Accept", accept.encode())])
    assert prefers_json(req) is json_


def test_hsts_only_over_tls() -> None:
    for scheme, hsts in (("https", True), ("http", False)):
        req = Request("GET", b"/", "/", b"", "1.1", [], scheme=scheme)
        response = Response(200, [(b"X-Content-Type-Options", b"mine")], b"")
        security_headers(req, response)
        names = [n for n, _ in response.headers]
        assert (b"Strict-Transport-Security" in names) is hsts
        assert names.count(b"X-Content-Type-Options") == 1  # the responder's own stays

