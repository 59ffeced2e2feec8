"""Unit tests of rex_workers.http.h1read: bytes in, events or HTTPError out (no sockets)."""

from __future__ import annotations

import gc
import weakref

import pytest

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


def events(reader, *pieces: bytes) -> list:
    """Feed the pieces; a queued FAIL is raised, as the connection handler does."""
    for piece in pieces:
        reader.feed(piece)
        for kind, payload in reader.events:
            if kind == FAIL:
                raise payload
    out = list(reader.events)
    reader.events.clear()
    return out


def request(data: bytes, limit: int = 16384):
    kinds = events(RequestReader(limit, ("10.0.0.1", 5555), 8080), data)
    assert kinds[0][0] == HEAD
    return kinds[0][1], kinds[1:]


def refused(data: bytes, limit: int = 16384) -> HTTPError:
    with pytest.raises(HTTPError) as info:
        events(RequestReader(limit), data)
    return info.value


def test_simple_request_head_fields():
    req, rest = request(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: Example.COM:8080\r\n"
                        b"X-A: 1\r\n\r\n")
    assert (req.method, req.target, req.raw_path, req.query) == (
        "GET", b"/a/b?x=1&y=%20", b"/a/b", b"x=1&y=%20")
    assert req.host == "example.com" and req.keep_alive and not req.has_body
    assert req.headers == [(b"Host", b"Example.COM:8080"), (b"X-A", b"1")]
    assert req.client_addr == ("10.0.0.1", 5555) and req.server_port == 8080
    assert rest == [(END, [])]


def test_pipelined_requests_come_out_in_order():
    reader = RequestReader(16384)
    out = events(reader, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [k for k, _ in out] == [HEAD, END, HEAD, END]
    assert [p.target for k, p in out if k == HEAD] == [b"/1", b"/2"]


def test_chunked_body_and_trailers():
    req, rest = request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    assert req.chunked and req.content_length is None
    assert rest == [(BODY, b"abc"), (BODY, b"de"), (END, [(b"X-Sum", b"5")])]


@pytest.mark.parametrize("name", [b"Authorization", b"host", b"Cache-Control", b"If-Match",
                                  b"Content-Type", b"Trailer", b"Cookie", b"TE"])
def test_a_request_trailer_that_may_not_be_one_is_refused(name):
    # RFC 9110 §6.5.1; the response side drops them instead (test_response_trailers).
    exc = refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\nX-Sum: 5\r\n%s: x\r\n\r\n" % name)
    assert exc.status == 400 and "trailer" in exc.reason


def test_body_split_across_feeds():
    reader = RequestReader(16384)
    out = events(reader, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab", b"cd",
                 b"ef")
    assert [(k, p) for k, p in out if k != HEAD] == [(BODY, b"ab"), (BODY, b"cd"),
                                                       (BODY, b"ef"), (END, [])]


@pytest.mark.parametrize(("data", "status"), [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    (b"GET http://user@evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET a HTTP/1.1\r\nHost: a\r\n\r\n", 400),
])
def test_refusals_carry_their_status(data, status):
    assert refused(data).status == status


def test_http10_without_host_is_fine_and_closes():
    req, _ = request(b"GET / HTTP/1.0\r\n\r\n")
    assert req.version == "1.0" and not req.keep_alive and req.host == ""


def test_absolute_form_authority_replaces_host():
    req, _ = request(b"GET http://Real.example:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
    assert req.raw_path == b"/p" and req.query == b"q" and req.host == "real.example"
    assert req.headers == [(b"Host", b"Real.example:81")]


def test_a_bad_pipelined_request_fails_after_the_good_ones_before_it():
    reader = RequestReader(16384)
    reader.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    kinds = [k for k, _ in reader.events]
    assert kinds == [HEAD, END, FAIL] and reader.events[-1][1].status == 400
    reader.feed(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")  # nothing is parsed after a failure
    assert len(reader.events) == 3


def test_bytes_after_a_connection_close_request_are_ignored():
    # RFC 9112 §9.6: the request that asked to close is complete; the rest is not ours.
    reader = RequestReader(16384)
    reader.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n")
    assert [k for k, _ in reader.events] == [HEAD, END]


def test_a_bad_body_of_a_connection_close_request_still_fails():
    reader = RequestReader(16384)
    reader.feed(b"POST /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert [k for k, _ in reader.events] == [HEAD, FAIL]


def test_head_over_limit_is_431_counting_all_fields():
    many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(20))
    assert refused(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", limit=1024).status == 431


def test_one_endless_header_line_is_refused_without_buffering_it():
    reader = RequestReader(1024)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    with pytest.raises(HTTPError) as info:
        for _ in range(100):
            events(reader, b"v" * 512)
    assert info.value.status == 431
    assert reader.in_head


def test_endless_trailer_is_refused():
    reader = RequestReader(1024)
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
    with pytest.raises(HTTPError) as info:
        for _ in range(100):
            events(reader, b"v" * 512)
    assert info.value.status == 400


def test_long_target_is_414():
    assert refused(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 1024).status == 414


def limited(data: bytes) -> list:
    return events(RequestReader(16384, line_limit=100, field_count=5, field_limit=50), data)


def test_the_request_line_limit_counts_the_whole_line():
    # "GET " + target + " HTTP/1.1": 100 bytes pass, 101 do not, whatever the method.
    assert limited(b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n" % (b"a" * 86))[0][0] == HEAD
    with pytest.raises(HTTPError) as info:
        limited(b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n" % (b"a" * 87))
    assert info.value.status == 414
    with pytest.raises(HTTPError) as info:
        limited(b"DELETE /%s HTTP/1.1\r\nHost: a\r\n\r\n" % (b"a" * 84))
    assert info.value.status == 414


@pytest.mark.parametrize(("fields", "reason"), [
    (b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n", "too many header fields"),
    (b"X-Long: %s\r\n" % (b"v" * 43), "header field too large"),
])
def test_field_count_and_one_field_s_size_are_431(fields, reason):
    # Host is the first of five; a field line of name + value + 4 bytes (": ", CRLF).
    assert limited(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n"
                   b"X-Ok: %s\r\n\r\n" % (b"v" * 42))[0][0] == HEAD
    with pytest.raises(HTTPError) as info:
        limited(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert (info.value.status, info.value.reason) == (431, reason)


def test_a_trailer_section_has_the_limits_of_a_head():
    with pytest.raises(HTTPError) as info:
        limited(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(6)) + b"\r\n")
    assert info.value.status == 431


@pytest.mark.parametrize("host", [
    b"a:8o", b"a:65536", b"a:99999999999", b"a:80:80", b"::1", b"a..b", b".a", b"a%zz",
    b"a@b", b"[::g]", b"[1:2]", b"[::1", b"[::1]x", b"[fe80::1%25eth0]", b":80",
])
def test_invalid_host_values_are_400(host):
    exc = refused(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert exc.status == 400 and "Host" in exc.reason
    # The MUST is about the field, so it holds beside an absolute-form target too.
    assert refused(b"GET http://b/ HTTP/1.1\r\nHost: %s\r\n\r\n" % host).status == 400
    assert refused(b"GET http://%s/ HTTP/1.1\r\nHost: b\r\n\r\n" % host).status == 400


@pytest.mark.parametrize(("host", "name"), [
    (b"a", "a"), (b"A.Example.", "a.example."), (b"a:", "a"), (b"a:065535", "a"),
    (b"[::1]:8080", "[::1]"), (b"[v1.x:y]", "[v1.x:y]"), (b"a%41", "a%41"),
    (b"1.2.3.4:80", "1.2.3.4"), (b"a_b-c~", "a_b-c~"), (b"[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]"),
])
def test_valid_host_values_and_the_host_routed_on(host, name):
    req, _ = request(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert req.host == name


@pytest.mark.parametrize("name", [b"Content-Type", b"Authorization", b"User-Agent", b"Range",
                                  b"If-Modified-Since", b"Referer", b"Max-Forwards"])
def test_a_singleton_field_with_two_values_is_400_and_with_one_is_folded(name):
    head = b"GET / HTTP/1.1\r\nHost: a\r\n%s: 1\r\nAccept: x\r\n%s: %%s\r\n\r\n" % (name, name)
    assert refused(head % b"2").status == 400
    req, _ = request(head % b"1")
    assert req.headers == [(b"Host", b"a"), (name, b"1"), (b"Accept", b"x")]


def test_list_fields_may_repeat():
    req, _ = request(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: x\r\nAccept: y\r\n"
                     b"Cookie: a=1\r\nCookie: b=2\r\n\r\n")
    assert len(req.headers) == 5


def test_websocket_upgrade_hands_over_the_rest():
    reader = RequestReader(16384)
    out = events(reader, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n\x81\x00")
    assert out[0][1].upgrade and not out[0][1].keep_alive
    assert out[-1] == (UPGRADE, b"\x81\x00")


# -- responses ---------------------------------------------------------------------

def response(*pieces: bytes, head: bool = False, eof: bool = False):
    reader = ResponseReader(16384, head)
    for piece in pieces:
        reader.feed(piece)
    if eof:
        reader.feed_eof()
    return reader, list(reader.events)


def test_response_with_length():
    reader, out = response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nhi")
    resp = out[0][1]
    assert (resp.status, resp.reason, resp.content_length, resp.keep_alive) == (200, b"OK", 2,
                                                                               True)
    assert out[1:] == [(BODY, b"hi"), (END, [])]
    assert reader.done and not reader.leftover


def test_interim_responses_come_before_the_final_one():
    _, out = response(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [k for k, _ in out] == [INFO, HEAD, END]
    assert out[0][1].status == 103 and out[0][1].headers == [(b"Link", b"</s.css>")]


def test_head_response_ends_at_the_head_and_extra_bytes_mark_leftover():
    reader, out = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head=True)
    assert [k for k, _ in out] == [HEAD, END] and not reader.leftover
    reader, _ = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", head=True)
    assert reader.leftover


def test_close_delimited_body_ends_at_eof():
    _, out = response(b"HTTP/1.1 200 OK\r\n\r\nabc", eof=True)
    assert out[1:] == [(BODY, b"abc"), (END, [])]


def test_truncated_body_is_an_error():
    with pytest.raises(HTTPError) as info:
        response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", eof=True)
    assert info.value.status == 502


def test_response_trailers():
    # Fields that may not be trailers are dropped from an upstream's, the rest kept.
    _, out = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"2\r\nhi\r\n0\r\nGrpc-Status: 0\r\nSet-Cookie: a=b\r\n\r\n")
    assert out[1:] == [(BODY, b"hi"), (END, [(b"Grpc-Status", b"0")])]


@pytest.mark.parametrize("data", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
])
def test_bad_upstream_responses_are_502(data):
    with pytest.raises(HTTPError) as info:
        response(data)
    assert info.value.status == 502


def test_upstream_upgrade_returns_tunnel_bytes():
    _, out = response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\n\x81\x01x")
    assert out[0][1].upgrade
    assert out[-1] == (UPGRADE, b"\x81\x01x")


def test_paths_in_log_lines_are_plain_or_escaped():
    from rex_workers.http.request import printable

    assert printable(b"/api/cart?x=1") == "/api/cart?x=1"
    assert printable(b"/\x1b[31mred") == "/\\x1b[31mred"  # no terminal escapes in logs
    assert printable(b"/caf\xc3\xa9") == "/caf\\xc3\\xa9"


@pytest.mark.parametrize("make, data", [
    (lambda: RequestReader(16384), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    (lambda: ResponseReader(16384), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
])
def test_released_reader_is_freed_without_the_garbage_collector(make, data):
    # httptools keeps the reader's bound methods: reader and parser form a cycle.
    # The hot path releases each reader it is done with, so no request leaves
    # garbage for the collector (a measurable share of a worker's time otherwise).
    gc.disable()
    try:
        reader = make()
        reader.feed(data)
        assert [kind for kind, _ in reader.events][-1] == END
        kept = weakref.ref(reader)
        del reader
        assert kept() is not None  # the cycle holds it: the point of release()
        reader = kept()
        reader.release()
        del reader
        assert kept() is None
    finally:
        gc.enable()


def test_response_reader_is_reused_for_the_next_response_on_its_connection():
    reader = ResponseReader(16384)
    first = events(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc")
    assert reader.reusable()
    reader.reset()
    second = events(reader, b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"2\r\nno\r\n0\r\nX-T: 1\r\n\r\n")
    assert [(k, p if k != HEAD else p.status) for k, p in first] == [
        (HEAD, 200), (BODY, b"abc"), (END, [])]
    head = second[0][1]
    assert (head.status, head.chunked, head.content_length, head.reason) == (
        404, True, None, b"Not Found")
    assert ("x-a" not in {k.lower() for k, _ in head.headers})  # nothing carried over
    assert second[1:] == [(BODY, b"no"), (END, [(b"X-T", b"1")])]
    assert reader.reusable() and not reader.leftover


@pytest.mark.parametrize("data, head_request, reusable", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False, True),
    # HEAD: llhttp would wait for the announced body, so its state is not a new parser's.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True, False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True, True),
    # Not at its end yet, or bytes after the end.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", False, False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 200 OK\r\n", False, False),
])
def test_response_reader_is_reusable_only_where_llhttp_stands_at_a_new_response(
        data, head_request, reusable):
    reader = ResponseReader(16384, head_request)
    events(reader, data)  # consumed, as the proxy does before it pools a connection
    assert reader.reusable() is reusable
