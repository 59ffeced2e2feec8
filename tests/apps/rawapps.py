"""Plain WSGI callables for the corners of PEP 3333 that frameworks hide.

Served by Rex in tests/test_wsgi.py under /raw (``app``) and /validated
(``validated``: wsgiref's validator checking both sides of the protocol).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from wsgiref.validate import validator

CLOSED: list[str] = []  # paths whose response iterable had close() called


def _json(start_response, data, status="200 OK"):
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


class Tracked:
    """An iterable with close(), recording that the server called it."""

    def __init__(self, path: str, parts, fail_at: int | None = None) -> None:
        self.path = path
        self.parts = parts
        self.fail_at = fail_at

    def __iter__(self):
        for n, part in enumerate(self.parts):
            if n == self.fail_at:
                raise RuntimeError("iteration failed")
            yield part

    def close(self) -> None:
        CLOSED.append(self.path)


def environ_view(environ, start_response):
    keys = [k for k in environ if k.isupper()]
    return _json(start_response, {k: environ[k] for k in keys if isinstance(environ[k], str)}
                 | {"url_scheme": environ["wsgi.url_scheme"]})


def read_lines(environ, start_response):
    stream = environ["wsgi.input"]
    first = stream.readline()
    two = stream.readlines(1)  # a hint: at least one more line
    rest = list(stream)
    return _json(start_response, {"first": first.decode(), "two": [x.decode() for x in two],
                                  "rest": [x.decode() for x in rest]})


def excinfo_early(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"replaced"]


def excinfo_late(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    try:
        raise ValueError("too late")
    except ValueError:
        start_response("500 Internal Server Error", [], sys.exc_info())  # re-raises
    yield b"never sent"


def hop_by_hop(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Keep-Alive", "timeout=1"),
                              ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
                              ("X-Kept", "yes")])
    return [b"hop"]


def legacy_write(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"then returned"]


def closing(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    fail_at = 1 if "fail" in environ["QUERY_STRING"] else None
    return Tracked(environ["QUERY_STRING"], [b"one ", b"two"], fail_at)


def closed(environ, start_response):
    return _json(start_response, CLOSED)


def file_view(environ, start_response):
    path = environ["QUERY_STRING"]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(path, "rb"), 8192)  # Rex calls its close()


def ignore_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"ignored"]


def log_errors(environ, start_response):
    errors = environ["wsgi.errors"]
    errors.write("first line for the log\nsecond ")
    errors.writelines(["line", "\n"])
    start_response("204 No Content", [])
    return []


def no_start(environ, start_response):
    return [b"no start_response"]


def sleep(environ, start_response):
    """Answers after QUERY_STRING seconds (cooperative: Rex monkey-patches its workers)."""
    time.sleep(float(environ["QUERY_STRING"] or 0))
    return _json(start_response, {"slept": environ["QUERY_STRING"]})


def echo_sha(environ, start_response):
    data = environ["wsgi.input"].read()
    return _json(start_response, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


VIEWS = {
    "/environ": environ_view, "/lines": read_lines, "/excinfo-early": excinfo_early,
    "/excinfo-late": excinfo_late, "/hop": hop_by_hop, "/write": legacy_write,
    "/closing": closing, "/closed": closed, "/file": file_view, "/ignore-body": ignore_body,
    "/no-start": no_start, "/echo": echo_sha, "/errors": log_errors, "/sleep": sleep,
}


def app(environ, start_response):
    view = VIEWS.get(environ["PATH_INFO"])
    if view is None:
        return _json(start_response, {"error": "no such view"}, "404 Not Found")
    return view(environ, start_response)


def _simple(environ, start_response):
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    body = b"validated " + data
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


validated = validator(_simple)
