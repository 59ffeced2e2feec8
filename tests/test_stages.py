"""The filter stage and the request stage of the response seam, through Rex's real connection.

Filters here are small ones written for the test (header rules and compression
come with their own issues): what the stage itself promises is that a filter
sees every response head once, may edit it, may transform the body whatever
its source (bytes, a streamed iterator, a file region, pushed writes), that
filters run in order, and that a response no filter transforms keeps its
zero-copy path. A request-stage rule answers before any responder runs.
"""

from __future__ import annotations

import os

import pytest
from inproc import exchange

from rex_workers.config.model import Instance
from rex_workers.config.routing import RouteTable
from rex_workers.http import pages
from rex_workers.http.message import FileRegion, Response
from rex_workers.serve.site import Site

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"


def tag(request, response):
    """A head-only filter: a header on every response, the body untouched."""
    response.headers.append((b"X-Filtered", request.method.encode()))
    return None


class Upper:
    def feed(self, data: bytes) -> bytes:
        return data.upper()

    def finish(self) -> bytes:
        return b""


def upper(request, response):
    """A body filter that knows no length in advance (as compression does not)."""
    if response.status != 200:
        return None
    response.length = None
    return Upper()


class Reverse:
    """Holds the whole body and gives it back reversed at the end."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        self.held += data
        return b""

    def finish(self) -> bytes:
        return self.held[::-1] + b"|"


def reverse(request, response):
    response.length = None
    return Reverse()


def with_filters(*filters, respond):
    def run(stream):
        stream.filters = filters
        respond(stream)

    return run


def body_of(out: bytes) -> bytes:
    """The de-chunked body of one chunked response."""
    _, rest = out.split(b"\r\n\r\n", 1)
    body = b""
    while True:
        size, rest = rest.split(b"\r\n", 1)
        if int(size, 16) == 0:
            return body
        body += rest[:int(size, 16)]
        rest = rest[int(size, 16) + 2:]


@pytest.fixture
def region(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello from a file")
    fd = os.open(path, os.O_RDONLY)
    yield FileRegion(fd, 6, 11)  # "from a file"
    os.close(fd)


def test_no_filter_leaves_a_file_region_to_sendfile(region, sendfile_calls):
    served = exchange(lambda s: s.respond(Response(200, [], region)), GET)
    assert served.out.endswith(b"Content-Length: 11\r\n\r\nfrom a file")
    assert sum(sendfile_calls) == 11


def test_a_head_filter_edits_the_head_and_keeps_zero_copy(region, sendfile_calls):
    served = exchange(with_filters(tag, respond=lambda s: s.respond(Response(200, [], region))),
                      GET)
    assert b"X-Filtered: GET\r\n" in served.out and served.out.endswith(b"\r\n\r\nfrom a file")
    assert sum(sendfile_calls) == 11


@pytest.mark.parametrize("body", [
    b"some bytes",
    iter([b"some ", b"", b"bytes"]),
], ids=["bytes", "iterator"])
def test_a_body_filter_sees_every_kind_of_body(body):
    served = exchange(with_filters(upper, respond=lambda s: s.respond(Response(200, [], body))),
                      GET)
    assert b"Transfer-Encoding: chunked\r\n" in served.out  # the filter dropped the length
    assert body_of(served.out) == b"SOME BYTES"
    assert served.keep_alive


def test_a_body_filter_reads_a_file_region(region, sendfile_calls):
    served = exchange(with_filters(upper, respond=lambda s: s.respond(Response(200, [], region))),
                      GET)
    assert body_of(served.out) == b"FROM A FILE" and sendfile_calls == []


def test_a_body_filter_sees_pushed_writes():
    def push(stream):
        stream.start(Response(200, [], None))
        stream.write(b"pushed ")
        stream.write(b"twice")
        stream.end()

    served = exchange(with_filters(upper, respond=push), GET)
    assert body_of(served.out) == b"PUSHED TWICE" and served.sent == 12


def test_filters_run_in_order_and_what_a_filter_holds_comes_out_at_the_end():
    served = exchange(with_filters(tag, upper, reverse,
                                   respond=lambda s: s.respond(Response(200, [], b"abc"))), GET)
    assert b"X-Filtered: GET\r\n" in served.out
    assert body_of(served.out) == b"CBA|"  # upper first, then reversed whole


def test_a_filter_may_decline_and_head_responses_stay_bodiless():
    served = exchange(with_filters(upper, respond=lambda s: s.respond(
        pages.response(404))), GET)
    assert served.status == 404 and b"<h1>404 Not Found</h1>" in served.out  # not upper-cased
    served = exchange(with_filters(tag, respond=lambda s: s.respond(Response(200, [], b"abc"))),
                      HEAD)
    assert served.out.endswith(b"X-Filtered: HEAD\r\nContent-Length: 3\r\n\r\n")


def test_a_request_rule_answers_before_any_responder():
    instance = Instance(index=0, port=8080, public=None)
    site = Site(instance, RouteTable(()), proxy=None, global_target=None, wsgi=None,
                group=None)
    seen = []

    def only_post(request):
        seen.append(request.method)
        if request.method != "POST":
            return pages.response(405, headers=(("Allow", "POST"),))
        return None

    site.rules = (only_post,)
    served = exchange(site.respond, GET)
    assert served.status == 405 and b"Allow: POST\r\n" in served.out and seen == ["GET"]
    # Let through, the request goes on to dispatch: a site with nothing configured
    # answers with its welcome page.
    served = exchange(site.respond, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert served.status == 200 and pages.page(0) in served.out and seen == ["GET", "POST"]
