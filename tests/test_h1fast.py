"""The fast lane accepts only what llhttp's strict path accepts, with the same meaning.

A differential fuzz: the same bytes go to a reader with the fast lane and to
one without (``RequestReader(..., fast=False)``); the events (each request's
method, target, fields, host, framing, keep-alive; bodies; trailers) and the
error status must be the same. The heads are drawn to sit on the lane's edges
(whitespace around values, case, special and singleton fields twice, limits),
and the hostile grammar of ``test_fuzz`` is replayed too.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given
from test_fuzz import describe, fuzz, pieces, raw_requests

from rex_workers.http.h1fast import fast_request
from rex_workers.http.h1read import (
    BODY,
    END,
    FAIL,
    HEAD,
    INFO,
    UPGRADE,
    RequestReader,
    ResponseReader,
)
from rex_workers.http.request import HTTPError

LIMITS = {"line_limit": 300, "field_count": 12, "field_limit": 200}

METHODS = [b"GET", b"GET", b"HEAD", b"POST", b"OPTIONS", b"get"]
TARGETS = [b"/", b"/a/b?x=1&y=%20", b"/a\"<>\\^`{|}~!$&*+,;=:@[]", b"/a#b", b"/\xc3\xa9",
           b"*", b"http://h/x", b"/" + b"p" * 280, b"/a b"]
HOSTS = [b"a", b"example.com:8080", b"[::1]:80", b"a..b", b"", b"a b", b"A.Example.",
         b"a:99999", b"a@b"]
NAMES = [b"Host", b"HOST", b"User-Agent", b"user-agent", b"Accept", b"Connection",
         b"Content-Length", b"Transfer-Encoding", b"Expect", b"Upgrade", b"Referer",
         b"Authorization", b"Cookie", b"X-A", b"Range", b"TE", b"Content-Type"]
VALUES = [b"a", b"keep-alive", b"Keep-Alive", b"close", b"upgrade", b"keep-alive, close",
          b"0", b"3", b"chunked", b"100-continue", b"websocket", b"x y", b"\xff\xfe",
          b"a\tb", b"", b"v" * 190, b"bytes=0-1", b"a=1; b=2"]
SPACES = [b"", b" ", b"  ", b"\t", b" \t"]


def mostly(good: list[bytes], anything: list[bytes]) -> st.SearchStrategy[bytes]:
    """Three draws in four from ``good``: most heads must reach the lane's edges, not
    stop at the first odd byte."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good),
                     st.sampled_from(anything))


@st.composite
def heads(draw) -> bytes:
    out = [draw(mostly([b"GET", b"HEAD"], METHODS)) + b" "
           + draw(mostly(TARGETS[:3], TARGETS)) + b" "
           + draw(mostly([b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/1.1 ", b"HTTP/2.0"])) + b"\r\n"]
    if draw(st.integers(0, 9)):
        out.append(b"Host: " + draw(mostly(HOSTS[:3], HOSTS)) + b"\r\n")
    for _ in range(draw(st.integers(0, 13))):
        name = draw(mostly([b"Accept", b"X-A", b"Cookie"], NAMES))
        value = draw(mostly([b"a", b"x y", b"a=1; b=2"], VALUES))
        out.append(name + b":" + draw(mostly([b" "], SPACES)) + value
                   + draw(mostly([b""], SPACES)) + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


pipelines = st.lists(heads(), min_size=1, max_size=3).map(b"".join)
tails = st.sampled_from([b"", b"GET / HT", b"3\r\nabc\r\n0\r\n\r\n", b"\r\n", b"x"])


def events(data: bytes, fast: bool, limits: dict = LIMITS) -> tuple[list, int | None]:
    """Every event of ``data`` fed whole: (requests described, bodies, ends; error)."""
    reader = RequestReader(1024, ("10.0.0.1", 5555), 8080, "http", fast=fast, **limits)
    reader.feed(data)
    out, error = [], None
    for kind, payload in reader.events:
        if kind == HEAD:
            out.append(("head", describe(payload)))
        elif kind in (BODY, END, UPGRADE):
            out.append((kind, payload if kind != END else tuple(payload)))
        elif kind == FAIL:
            error = payload.status
    return out, error


@fuzz(600)
@given(data=st.tuples(pipelines, tails).map(b"".join))
def test_the_fast_lane_means_what_the_strict_path_means(data):
    assert events(data, fast=True) == events(data, fast=False)


@fuzz(300)
@given(data=raw_requests)
def test_hostile_bytes_read_the_same_with_and_without_the_fast_lane(data):
    assert events(data, fast=True) == events(data, fast=False)


@fuzz(600)
@given(head=heads())
def test_what_the_fast_lane_takes_the_strict_path_takes(head):
    req = fast_request(head[:-2], ("10.0.0.1", 5555), 8080, "http")
    if req is None:
        return
    strict = events(head, fast=False, limits={})  # the reader checks limits before the lane
    assert strict[1] is None and strict[0][0] == ("head", describe(req))


WRK = b"GET /13b.bin HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BROWSER = (b"GET /app.js?v=3 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\n"
           b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
           b"Referer: https://example.com/\r\nCookie: a=1; b=2\r\n\r\n")


@pytest.mark.parametrize("head", [WRK, BROWSER, WRK.replace(b"GET", b"HEAD"),
                                  BROWSER.replace(b"keep-alive", b"close")])
def test_common_heads_take_the_fast_lane(head):
    req = fast_request(head[:-2], ("", 0), 80, "http")
    assert req is not None
    assert events(head, fast=False)[0][0] == ("head", describe(req))


@pytest.mark.parametrize("change", [
    (b"Accept: */*", b"Accept: */* "),  # trailing whitespace: llhttp keeps it
    (b"keep-alive", b"Upgrade"),
    (b"Accept: */*", b"Content-Length: 0"),
    (b"Accept: */*", b"User-Agent: other"),  # a singleton twice
    (b"Accept: */*", b"Host: example.com"),  # Host twice
    (b"GET /app.js", b"GET http://example.com/app.js"),
    (b"GET", b"POST"),
    (b"HTTP/1.1", b"HTTP/1.0"),
    (b"Host: example.com", b"Host: a..b"),
])
def test_what_the_fast_lane_leaves_to_llhttp(change):
    head = BROWSER.replace(*change)
    assert fast_request(head[:-2], ("", 0), 80, "http") is None


def test_pipelined_heads_after_a_close_are_ignored_either_way():
    data = (WRK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + WRK) * 2
    fast = RequestReader(16384)
    fast.feed(data)
    assert [k for k, _ in fast.events] == [HEAD, END]
    fast.feed(WRK)  # a later read is not parsed either
    assert len(fast.events) == 2


def test_a_head_near_a_limit_goes_to_the_strict_path():
    # Half of header_bytes at most, and within the line and field limits: else llhttp.
    reader = RequestReader(1024, **LIMITS)
    long_target = b"GET /" + b"a" * 296 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    with pytest.raises(HTTPError):
        for kind, payload in (reader.feed(long_target) or reader.events):
            if kind == FAIL:
                raise payload


# -- upstream responses -------------------------------------------------------------------

STATUS_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 404 Not Found",
                b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 100 Continue",
                b"HTTP/1.1 200 ", b"HTTP/1.1 200", b"HTTP/1.1 999 Odd", b"HTTP/1.2 200 OK",
                b"HTTP/1.1 200 \xc3\xa9t\xc3\xa9", b"HTTP/1.1 099 Low"]
RESPONSE_FIELDS = [b"Content-Length: 3", b"Content-Length: 3", b"content-length:3",
                   b"Content-Length: 03", b"Content-Length: 4", b"Content-Length: 0",
                   b"Content-Length: 3, 3", b"Content-Length: +3", b"Transfer-Encoding: chunked",
                   b"Connection: close", b"Connection: keep-alive", b"Connection: Upgrade",
                   b"Server: nginx/1.22.1", b"Date: Sun, 06 Dec 2026 06:00:00 GMT",
                   b"Content-Type: text/html", b"X-A: a ", b"ETag: \"abc\"",
                   b"Keep-Alive: timeout=5"]
RESPONSE_BODIES = [b"abc", b"", b"abcd", b"ab", b"3\r\nabc\r\n0\r\n\r\n", b"abcHTTP/1.1 200 OK\r\n"]


@st.composite
def responses(draw) -> bytes:
    lines = [draw(mostly([b"HTTP/1.1 200 OK"], STATUS_LINES))]
    for _ in range(draw(st.integers(0, 7))):
        lines.append(draw(mostly([b"Content-Length: 3", b"Server: nginx", b"X-B: b"],
                                 RESPONSE_FIELDS)))
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(mostly([b"abc"], RESPONSE_BODIES))


def response_events(data: bytes, fast: bool, head: bool, cuts: tuple = (), eof: bool = False
                    ) -> tuple:
    """What a reader makes of ``data`` fed in pieces (cut at ``cuts``), then the close."""
    reader = ResponseReader(1024, head_request=head, fast=fast)
    try:
        for piece in pieces(data, list(cuts)):
            reader.feed(piece)
        if eof:
            reader.feed_eof()
    except HTTPError as exc:
        return ("error", exc.status)
    out = []
    for kind, payload in reader.events:
        if kind in (HEAD, INFO):
            out.append((kind, payload.status, payload.version, tuple(payload.headers),
                        payload.content_length, payload.chunked, payload.keep_alive,
                        payload.upgrade, payload.reason))
        else:
            out.append((kind, payload if kind == BODY else tuple(payload)))
    return (out, reader.done, reader.complete, reader.leftover, reader.head_seen,
            reader.reusable())


@fuzz(600)
@given(data=responses(), head=st.booleans(), eof=st.booleans(),
       cuts=st.lists(st.integers(0, 200), max_size=3).map(tuple))
def test_an_upstream_response_reads_the_same_with_and_without_the_fast_lane(data, head, eof,
                                                                              cuts):
    # Bodies are compared joined: llhttp and the lane may hand them over in other pieces.
    fast, strict = (response_events(data, lane, head, cuts, eof) for lane in (True, False))
    assert joined(fast) == joined(strict)


def joined(result: tuple) -> tuple:
    if result[0] == "error":
        return result
    events, *flags = result
    out = []
    for event in events:
        if event[0] == BODY and out and out[-1][0] == BODY:
            out[-1] = (BODY, out[-1][1] + event[1])
        else:
            out.append(event)
    return (out, *flags)


def test_the_next_response_on_a_pooled_connection_after_a_fast_one():
    one = b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 3\r\n\r\nabc"
    reader = ResponseReader(16384)
    reader.feed(one)
    assert [k for k, _ in reader.events] == [HEAD, BODY, END]
    reader.events.clear()
    assert reader.reusable()
    reader.reset()
    # llhttp never saw the first: it reads the next (chunked, not the lane's) from the start.
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n")
    assert [(k, p) for k, p in reader.events if k != HEAD] == [(BODY, b"xyz"), (END, [])]
    reader.events.clear()
    assert reader.reusable()


@pytest.mark.parametrize("field", [b"If-None-Match: \"x\"", b"if-match: *", b"Range: bytes=0-1",
                                   b"If-Modified-Since: Sun, 06 Dec 2026 06:00:00 GMT",
                                   b"If-Unmodified-Since: Sun, 06 Dec 2026 06:00:00 GMT",
                                   b"If-Range: \"x\""])
def test_the_lane_says_whether_a_head_may_be_conditional(field):
    # Static files skip precondition and range evaluation only when this is False.
    plain = fast_request(WRK[:-2], ("", 0), 80, "http")
    assert plain is not None and plain.conditional is False
    head = WRK[:-2] + field + b"\r\n"
    req = fast_request(head, ("", 0), 80, "http")
    assert req is not None and req.conditional is True


def test_host_verdicts_are_remembered_only_for_valid_hosts_and_within_a_bound():
    # The lane remembers a valid Host's name (a client repeats it on every request);
    # the memory must give what judging gives, hold no invalid value, and stay bounded.
    from rex_workers.http import authority

    head = b"GET / HTTP/1.1\r\nHost: %s\r\n"
    for _ in range(2):  # judged, then remembered
        assert fast_request(head % b"Mixed.Example:81", ("", 0), 80, "http").host \
            == "mixed.example"
    assert authority.VALID_HOSTS[b"Mixed.Example:81"] == "mixed.example"
    assert fast_request(head % b"a..b", ("", 0), 80, "http") is None
    assert b"a..b" not in authority.VALID_HOSTS
    for n in range(authority._VALID_HOSTS_MAX + 10):
        assert authority.valid_host(b"h%d.example" % n) == f"h{n}.example"
    assert len(authority.VALID_HOSTS) <= authority._VALID_HOSTS_MAX
