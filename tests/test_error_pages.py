"""error_pages, intercept_errors and JSON errors for API clients, through a real master."""

from __future__ import annotations

import json

from conftest import free_port, send_request
from test_front_door import Failing


def get(port: int, path: str, *fields: str, method: str = "GET") -> object:
    extra = "".join(f"{f}\r\n" for f in fields)
    return send_request(port, f"{method} {path} HTTP/1.1\r\nHost: site.test\r\n{extra}"
                              "Connection: close\r\n\r\n".encode())


def test_error_pages(rex, tmp_path, upstream):
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "404.html").write_text("<h1>lost</h1>\n")
    (tmp_path / "errors" / "5xx.html").write_text("<h1>down</h1>\n")
    (tmp_path / "errors" / "api.json").write_text('{"oops": true}\n')
    (tmp_path / "files").mkdir()
    up = upstream(Failing)
    dead = free_port()
    port = rex.serve(f"""\
        - path: /dead
          destination: http://127.0.0.1:{dead}
        - path: /app
          destination: {up.url}
        - path: /caught
          destination: {up.url}
          intercept_errors: true
        - path: /api
          destination: {up.url}
          intercept_errors: true
          error_pages: {{500: errors/api.json}}
        - path: /files
          destination: static:files
        """, instance="error_pages: {404: errors/404.html, 5xx: errors/5xx.html}")
    for path in ("/nowhere", "/files/missing.txt"):  # a route's 404 and a static: route's
        lost = get(port, path)
        assert (lost.status, lost.body) == (404, b"<h1>lost</h1>\n"), path
        assert lost.headers["content-type"].startswith("text/html")
    down = get(port, "/dead/x")
    assert (down.status, down.body) == (502, b"<h1>down</h1>\n")  # the class's page
    head = get(port, "/dead/x", method="HEAD")
    assert head.status == 502 and head.headers["content-length"] == str(len(b"<h1>down</h1>\n"))
    # Upstream errors keep their body unless intercepted; the status never changes.
    assert get(port, "/app/fail").body == b"upstream oops"
    caught = get(port, "/caught/fail")
    assert (caught.status, caught.body) == (500, b"<h1>down</h1>\n")
    api = get(port, "/api/fail")
    assert (api.status, api.body) == (500, b'{"oops": true}\n')  # the route's own page
    assert api.headers["content-type"].startswith("application/json")
    assert get(port, "/caught/x").status == 200  # success passes untouched
    # A client that prefers JSON gets JSON for Rex's own errors, page or not.
    for path, status in (("/nowhere", 404), ("/dead/x", 502), ("/caught/fail", 500)):
        reply = get(port, path, "Accept: application/json")
        assert reply.status == status
        assert reply.headers["content-type"] == "application/json"
        assert json.loads(reply.body)["status"] == status


def test_json_errors_without_any_config(rex, upstream):
    port = rex.serve({"/api": upstream().url})
    reply = get(port, "/nothing", "Accept: application/json, text/plain, */*")
    assert (reply.status, json.loads(reply.body)) == (404, {"status": 404, "error": "Not Found"})
    browser = get(port, "/nothing", "Accept: text/html,*/*;q=0.8")
    assert browser.status == 404 and browser.body.startswith(b"<!doctype html>")
