"""End-to-end: a real master and worker proxying to real upstreams."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest
from conftest import free_port, raw_request, site_config


def get(url: str, **kw):
    req = urllib.request.Request(url, **kw)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def api_site(rex_module, upstream_module):
    rex = rex_module
    api, front = upstream_module(), upstream_module()
    port = rex.serve(f"""\
        - path: /api
          destination: {api.url}
        - path: /old
          destination: {api.url}/v2
        - path: /strip
          destination: {api.url}
          strip_prefix: true
    """, "workers: 1")
    return port, api, front


def test_prefix_route_forwards_path_and_query_unchanged(api_site):
    port, api, _ = api_site
    status, _, body = get(f"http://127.0.0.1:{port}/api/users?x=1&y=%20z")
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/api/users?x=1&y=%20z"
    assert api.requests[-1]["path"] == "/api/users?x=1&y=%20z"


def test_segment_boundary(api_site):
    port, api, _ = api_site
    before = len(api.requests)
    status, _, body = get(f"http://127.0.0.1:{port}/apix")
    assert status == 404
    assert b"404" in body
    assert len(api.requests) == before
    assert get(f"http://127.0.0.1:{port}/api")[0] == 200


def test_base_path_and_strip_prefix(api_site):
    port, _, _ = api_site
    assert json.loads(get(f"http://127.0.0.1:{port}/old/a?q=1")[2])["path"] == "/v2/a?q=1"
    assert json.loads(get(f"http://127.0.0.1:{port}/strip/b/c")[2])["path"] == "/b/c"
    assert json.loads(get(f"http://127.0.0.1:{port}/strip")[2])["path"] == "/"


def test_forwarding_headers(api_site):
    port, api, _ = api_site
    # http.client, not urllib: urllib replaces the Connection field with its own.
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    client.request("GET", "/api/h", headers={"X-Forwarded-For": "6.6.6.6",
                                             "Connection": "X-Drop", "X-Drop": "1",
                                             "X-Keep": "2"})
    resp = client.getresponse()
    headers, body = dict(resp.headers), resp.read()
    client.close()
    seen = json.loads(body)["headers"]
    assert seen["Host"] == f"127.0.0.1:{api.port}"
    # An untrusted client's X-Forwarded-For is replaced, not extended.
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == f"127.0.0.1:{port}"
    assert seen["X-Forwarded-Port"] == str(port)
    assert seen["Via"] == "1.1 rex"
    assert "X-Drop" not in seen and seen["X-Keep"] == "2"
    assert "1.1 rex" in headers["Via"]


def test_post_body_reaches_upstream(api_site):
    port, _, _ = api_site
    status, _, body = get(f"http://127.0.0.1:{port}/api/form", data=b"a=1&b=2", method="POST")
    assert status == 200
    assert json.loads(body)["body"] == "a=1&b=2"


def test_refused_upstream_is_a_fast_502(rex):
    port, dead = free_port(), free_port()
    rex.write(site_config(port, {"/": f"http://127.0.0.1:{dead}"}, "workers: 1"))
    rex.start(ports=(port,))
    status, _, body = get(f"http://127.0.0.1:{port}/x")
    assert status == 502
    assert b"Bad Gateway" in body


def test_welcome_page_when_nothing_is_configured(rex):
    port = free_port()
    rex.write(f"server:\n  instances:\n    - port: {port}\n      host: 127.0.0.1\n")
    rex.start(ports=(port,))
    status, _, body = get(f"http://127.0.0.1:{port}/")
    assert status == 200 and b"Welcome to Rex" in body


def test_malformed_request_is_400_and_never_forwarded(api_site):
    port, api, _ = api_site
    before = len(api.requests)
    reply = raw_request(port, b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in reply
    assert len(api.requests) == before


def test_keep_alive_to_client_and_upstream(api_site):
    port, api, _ = api_site
    reply = raw_request(port, b"GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n"
                              b"GET /api/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    first, second = api.requests[-2:]
    assert first["path"] == "/api/1" and second["path"] == "/api/2"
    assert first["peer"] == second["peer"]  # one pooled upstream connection served both
