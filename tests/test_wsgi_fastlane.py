"""The WSGI fast lane (issue 18): the short path must mean exactly what the strict one does.

``parse_head`` reuses statuses and field names its strict check accepted before;
``header_vars`` reuses the environ key of a field name seen before; a bodyless
request shares one empty ``wsgi.input``; a one-piece list body goes out with its
head in one send. Each is checked against the path it shortcuts, with no master:
the pure helpers on data, ``WSGIApps.serve`` through the in-process connection.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inproc import exchange, runtime

from rex_workers.config.model import Config, Instance, Route
from rex_workers.serve.conn import ClientConn
from rex_workers.wsgi import environ, response
from rex_workers.wsgi.host import WSGIApps
from rex_workers.wsgi.response import WSGIResponseError, parse_head

NAMES = ["Content-Type", "content-type", "Content-Length", "Date", "Server", "Set-Cookie",
         "Connection", "Keep-Alive", "X-Request-ID", "Bad Name", "X_Under", "", "Ünï"]
VALUES = ["text/plain", "13", " 13", "-1", "007", "1" * 19, "close", "", "a=1; Path=/",
          "\u00e9", "\u20ac", "x\r\ny: 1", "line\n", "nul\0", "Sun, 06 Dec 2026 06:00:00 GMT"]
STATUSES = ["200 OK", "201 Created", "404", "200 Fine by me", "200OK", "100 Continue",
            "200 OK\r\nX: y", "999 Odd"]
ITEMS = st.one_of(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)),
                  st.sampled_from([("X", b"bytes"), ["X", "list"], ("X",), ("X", "a", "b"),
                                   (b"X", "v"), (None, "v")]))


def outcome(check, status, headers):
    """What a check makes of the arguments: the head's parts, or the error it raises."""
    try:
        head = check(status, headers)
    except WSGIResponseError as exc:
        return ("refused", str(exc))
    return (head.status, head.reason, head.headers, head.content_length, head.close,
            head.dated, head.served)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STATUSES), st.lists(ITEMS, max_size=6))
def test_parse_head_fast_lane_agrees_with_the_strict_check(status, headers):
    strict = outcome(response._checked_head, status, list(headers))  # learns what it accepts
    assert outcome(parse_head, status, list(headers)) == strict
    assert outcome(parse_head, status, list(headers)) == strict


def test_parse_head_learns_only_what_the_fast_lane_may_reuse(monkeypatch):
    monkeypatch.setattr(response, "_STATUSES", {})
    monkeypatch.setattr(response, "_NAMES", {})
    parse_head("200 OK", [("Content-Type", "a"), ("Connection", "close"),
                          ("X-Request-ID", "app's"), ("Content-Length", "1")])
    assert response._STATUSES == {"200 OK": (200, b"OK")}
    # Hop-by-hop fields and X-Request-ID are dropped by the strict check alone.
    assert response._NAMES == {"Content-Type": (b"Content-Type", response._PLAIN),
                               "Content-Length": (b"Content-Length", response._LENGTH)}
    head = parse_head("200 OK", [("Content-Type", "a"), ("Connection", "close")])
    assert head.close and head.headers == [(b"Content-Type", b"a")]


def test_the_learnt_tables_stop_growing(monkeypatch):
    monkeypatch.setattr(response, "_NAMES", {})
    monkeypatch.setattr(response, "_LEARN_MAX", 3)
    parse_head("200 OK", [(f"X-{i}", "v") for i in range(10)])
    assert len(response._NAMES) == 3
    monkeypatch.setattr(environ, "_KEYS", {})
    monkeypatch.setattr(environ, "_KEYS_MAX", 3)
    got = environ.header_vars([(b"X-%d" % i, b"v") for i in range(10)], trusted=False)
    assert len(got) == 10 and len(environ._KEYS) == 3


FIELDS = st.lists(st.tuples(
    st.sampled_from([b"Accept", b"accept", b"Cookie", b"X-User_Id", b"Proxy", b"Content-Type",
                     b"content-type", b"Content-Length", b"X-Forwarded-For", b"x-forwarded-proto",
                     b"X-Request-ID", b"Dash-Ed"]),
    st.sampled_from([b"a", b"b=1", b"\xe9", b""])), max_size=8)


@settings(max_examples=200, deadline=None)
@given(FIELDS, st.booleans())
def test_header_vars_from_learnt_keys_equal_the_first_time(fields, trusted):
    first = environ.header_vars(fields, trusted)  # may learn keys
    saved, environ._KEYS = environ._KEYS, {}
    try:
        fresh = environ.header_vars(fields, trusted)  # works every key out again
    finally:
        environ._KEYS = saved
    assert first == fresh == environ.header_vars(fields, trusted)


# -- through the connection ------------------------------------------------------------------

GET = b"GET /app/x HTTP/1.1\r\nHost: example.test\r\n\r\n"
POST = b"POST /app/x HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4\r\n\r\nDATA"


def serve(app, raw: bytes = GET):
    route = Route(path="/app", index=0, wsgi="x:app")
    config = Config(path="", digest="", instances=(Instance(index=0, port=8080,
                                                            routes=(route,)),))
    ctx = runtime()
    apps = WSGIApps(config, ctx.trusted.__contains__, load=lambda spec: app)
    return exchange(lambda stream: apps.serve(stream, route, 1), raw, ctx)


@pytest.fixture
def sends(monkeypatch):
    """Every send of a response's bytes the connection made (the bytes of each)."""
    calls: list[bytes] = []
    real = ClientConn._send

    def counting(self, data, *args):
        calls.append(bytes(data))
        return real(self, data, *args)

    monkeypatch.setattr(ClientConn, "_send", counting)
    return calls


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


def test_a_one_piece_body_goes_out_with_its_head_in_one_send(sends):
    for _ in range(2):  # the first response teaches the fast lane, the second takes it
        sends.clear()
        served = serve(hello)
        assert (served.status, served.sent) == (200, 13)
        assert len(sends) == 1 and sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert sends[0].endswith(b"\r\n\r\nHello, world!")
        assert b"Content-Length: 13\r\n" in sends[0] and b"Date: " in sends[0]


def test_a_one_piece_body_after_write_is_streamed_on():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])(b"first ")
        return [b"second"]

    served = serve(app)
    assert b"Transfer-Encoding: chunked" in served.out and served.sent == 12


def test_bodyless_requests_share_one_empty_input_and_others_get_their_own():
    seen = []

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        seen.append((stream, stream.read(), stream.readline(), stream.read1(5)))
        start_response("200 OK", [])
        return [b""]

    serve(app)
    serve(app)
    serve(app, POST)
    (a, *rest_a), (b, *rest_b), (c, *rest_c) = seen
    assert a is b and rest_a == rest_b == [b"", b"", b""]
    assert c is not a and rest_c == [b"DATA", b"", b""]
