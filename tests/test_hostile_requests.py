"""Hostile requests, raw bytes: smuggling forms, odd lines and targets, h2c, oversized heads.

The cases are data: ``tests/hostile/requests/*.http`` (format in
``tests/hostile/README.md``); oversized ones are made in code below. They add
to ``tests/http`` (which checks each refusal's status) the invariant checked
at a recording upstream that parses strictly (``test_hostile_strict``):

- whatever reaches the upstream parses strictly and never carries both
  Content-Length and Transfer-Encoding;
- the upstream never sees more requests than the client got responses;
- every reply is well-formed HTTP/1.1, and a refusal closes the connection.

Each case goes over its own connection, half-closed once sent, so every case
ends with Rex closing: a hang fails the case after 5 seconds.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_hostile_strict import StrictUpstream, load_case, read_replies, unescape, xfail_marks

CASES = Path(__file__).parent / "hostile" / "requests"
NAMES = sorted(p.stem for p in CASES.glob("*.http"))
HEAD = b"POST /x HTTP/1.1\r\nHost: a\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
# Over a limit of the site below, made in code: ``header_bytes`` 4 KiB, ``body_bytes``
# 64 KiB, ``request_line_bytes`` and ``field_bytes`` 2 KiB, ``header_fields`` 50.
BIG = {
    "many-tiny-fields": (b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"a:b\r\n" * 3000 + b"\r\n", [431]),
    "fields-over-count": (b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"a:b\r\n" * 50 + b"\r\n", [431]),
    "fields-at-count": (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                        + b"a:b\r\n" * 48 + b"\r\n", [200]),
    "field-over-size": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: " + b"v" * 2042 + b"\r\n\r\n", [431]),
    "field-at-size": (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-A: "
                      + b"v" * 2041 + b"\r\n\r\n", [200]),
    "line-over-size": (b"GET /" + b"a" * 2035 + b" HTTP/1.1\r\nHost: a\r\n\r\n", [414]),
    "line-at-size": (b"GET /" + b"a" * 2034 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                     [200]),
    "long-method": (b"A" * 5000 + b" /x HTTP/1.1\r\nHost: a\r\n\r\n", [400]),
    "long-version": (b"GET /x HTTP/" + b"1" * 5000 + b"\r\nHost: a\r\n\r\n", [400]),
    "long-trailer": (CHUNKED + b"3\r\nabc\r\n0\r\nX-T: " + b"t" * 6000 + b"\r\n\r\n", [431]),
    "chunk-bigger-than-body-limit": (CHUNKED + b"ffffffff\r\n" + b"x" * 70000, [413]),
}


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    strict = StrictUpstream()
    up = upstream_module.raw(strict)
    port = rex_module.serve({"/": up.url}, """\
        limits: {header_bytes: 4k, body_bytes: 64k, request_line_bytes: 2k, field_bytes: 2k,
                 header_fields: 50}
        timeouts: {header: 3, read: 5}
        logging: {access: off}
        workers: 1
    """)
    return port, strict


def send(port: int, data: bytes) -> list:
    """Send ``data``, half-close, and return every final response until Rex closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # Rex refused and closed while we were still sending: read its answer
        return read_replies(s)[0]


def check_invariant(strict: StrictUpstream, before: int, replies: list) -> list:
    """The suite's invariant; returns the requests this case brought to the upstream."""
    seen = strict.requests[before:]
    assert strict.violations == []
    assert len(seen) <= len(replies), "the upstream saw more requests than the client got answers"
    for reply in replies:
        if reply.status >= 400:
            assert reply.values(b"connection") == [b"close"]
    return seen


@pytest.mark.parametrize("name", [pytest.param(n, marks=xfail_marks(CASES / f"{n}.http"))
                                  for n in NAMES])
def test_request_case(site, name):
    port, strict = site
    meta, (data,) = load_case(CASES / f"{name}.http")
    expect = [int(s) for s in meta["expect"].split()]
    before = len(strict.requests)
    replies = send(port, data)
    seen = check_invariant(strict, before, replies)
    assert [r.status for r in replies] == expect
    assert len(seen) == int(meta.get("upstream", sum(s < 300 for s in expect)))
    if "body" in meta:
        assert seen[0].body == unescape(meta["body"])
    if "target" in meta:
        assert seen[0].start.split(b" ")[1] == meta["target"].encode()
    for name in meta.get("absent", "").replace(",", " ").split():
        assert not seen[0].values(name.lower().encode()), f"{name} reached the upstream"
    if "present" in meta:  # exactly one such line, with this value
        name, _, value = meta["present"].partition(":")
        assert seen[0].values(name.lower().encode()) == [value.strip().encode()]
    if "trailer" in meta:
        name, _, value = meta["trailer"].partition(":")
        assert seen[0].trailers == [(name.encode(), value.strip().encode())]


@pytest.mark.parametrize("name", sorted(BIG))
def test_oversized_case(site, name):
    port, strict = site
    data, expect = BIG[name]
    before = len(strict.requests)
    replies = send(port, data)
    assert len(check_invariant(strict, before, replies)) == expect.count(200)
    assert [r.status for r in replies] == expect


def test_smuggled_bytes_never_reach_the_upstream(site):
    """Last: nothing any case sent, complete or aborted, carried a smuggled request."""
    _, strict = site
    assert strict.violations == []
    for msg in strict.requests:
        assert b"SMUGGLED" not in msg.start and not msg.start.startswith(b"GPOST")
        assert b"/smuggled" not in msg.start and b"/admin" not in msg.start
