"""rex_static.conditional and .negotiate: preconditions, ranges, encodings, as tables."""

from __future__ import annotations

import pytest

from rex_static.conditional import (
    UNSATISFIABLE,
    Outcome,
    Validators,
    etag_matches,
    evaluate,
    http_date,
    make_etag,
    parse_http_date,
    parse_range,
)
from rex_static.negotiate import accepts_html, choose_encoding, qlist

MTIME = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"
ETAG = '"abc-64"'
V = Validators(ETAG.encode(), MTIME, 100)


def run(headers: dict[str, str], method: str = "GET", v: Validators = V) -> Outcome:
    table = {k.lower().encode(): val.encode() for k, val in headers.items()}
    return evaluate(method, table.get, v)


@pytest.mark.parametrize(("headers", "method", "expected"), [
    ({}, "GET", Outcome(200, 0, 100)),
    ({}, "HEAD", Outcome(200, 0, 100)),
    # If-None-Match (RFC 9110 §13.1.2): weak comparison; 304 for GET/HEAD.
    ({"If-None-Match": ETAG}, "GET", Outcome(304)),
    ({"If-None-Match": ETAG}, "HEAD", Outcome(304)),
    ({"If-None-Match": f'"x", W/{ETAG}'}, "GET", Outcome(304)),
    ({"If-None-Match": "*"}, "GET", Outcome(304)),
    ({"If-None-Match": '"other"'}, "GET", Outcome(200, 0, 100)),
    ({"If-None-Match": ETAG}, "DELETE", Outcome(412)),
    # If-Modified-Since (§13.1.3): ignored when If-None-Match is present.
    ({"If-Modified-Since": DATE}, "GET", Outcome(304)),
    ({"If-Modified-Since": LATER}, "GET", Outcome(304)),
    ({"If-Modified-Since": EARLIER}, "GET", Outcome(200, 0, 100)),
    ({"If-Modified-Since": "yesterday"}, "GET", Outcome(200, 0, 100)),
    ({"If-Modified-Since": DATE, "If-None-Match": '"other"'}, "GET", Outcome(200, 0, 100)),
    ({"If-Modified-Since": DATE}, "POST", Outcome(200, 0, 100)),
    # If-Match / If-Unmodified-Since (§13.1.1, §13.1.4): strong comparison, 412.
    ({"If-Match": ETAG}, "GET", Outcome(200, 0, 100)),
    ({"If-Match": f"W/{ETAG}"}, "GET", Outcome(412)),
    ({"If-Match": '"other"'}, "GET", Outcome(412)),
    ({"If-Match": "*"}, "GET", Outcome(200, 0, 100)),
    ({"If-Unmodified-Since": EARLIER}, "GET", Outcome(412)),
    ({"If-Unmodified-Since": DATE}, "GET", Outcome(200, 0, 100)),
    ({"If-Match": ETAG, "If-Unmodified-Since": EARLIER}, "GET", Outcome(200, 0, 100)),
    ({"If-Match": '"other"', "If-None-Match": ETAG}, "GET", Outcome(412)),
    # Range (§14.2) and If-Range (§13.1.5).
    ({"Range": "bytes=0-9"}, "GET", Outcome(206, 0, 10)),
    ({"Range": "bytes=0-9"}, "HEAD", Outcome(206, 0, 10)),
    ({"Range": "bytes=0-9"}, "POST", Outcome(200, 0, 100)),
    ({"Range": "bytes=100-"}, "GET", Outcome(416)),
    ({"Range": "bytes=0-9,20-29"}, "GET", Outcome(200, 0, 100)),
    ({"Range": "bytes=0-9", "If-Range": ETAG}, "GET", Outcome(206, 0, 10)),
    ({"Range": "bytes=0-9", "If-Range": '"old"'}, "GET", Outcome(200, 0, 100)),
    ({"Range": "bytes=0-9", "If-Range": f"W/{ETAG}"}, "GET", Outcome(200, 0, 100)),
    ({"Range": "bytes=0-9", "If-Range": DATE}, "GET", Outcome(206, 0, 10)),
    ({"Range": "bytes=0-9", "If-Range": EARLIER}, "GET", Outcome(200, 0, 100)),
    ({"Range": "bytes=0-9", "If-None-Match": ETAG}, "GET", Outcome(304)),
])
def test_evaluate(headers, method, expected):
    assert run(headers, method) == expected


@pytest.mark.parametrize(("value", "size", "expected"), [
    (b"bytes=0-0", 100, (0, 1)),
    (b"bytes=0-99", 100, (0, 100)),
    (b"bytes=0-1000", 100, (0, 100)),  # last-pos past the end is clamped
    (b"bytes=10-", 100, (10, 100)),
    (b"bytes=99-", 100, (99, 100)),
    (b"bytes=-1", 100, (99, 100)),
    (b"bytes=-100", 100, (0, 100)),
    (b"bytes=-500", 100, (0, 100)),  # a suffix longer than the file is the whole file
    (b"BYTES = 1 - 2 ", 100, (1, 3)),
    (b"bytes=100-", 100, UNSATISFIABLE),
    (b"bytes=100-200", 100, UNSATISFIABLE),
    (b"bytes=-0", 100, UNSATISFIABLE),
    (b"bytes=0-", 0, UNSATISFIABLE),
    (b"bytes=-5", 0, UNSATISFIABLE),
    (b"bytes=5-1", 100, None),  # last < first: invalid, ignored
    (b"bytes=-", 100, None),
    (b"bytes=", 100, None),
    (b"bytes=a-b", 100, None),
    (b"bytes=0-1,2-3", 100, None),  # several ranges: 200 with everything
    (b"items=0-1", 100, None),
    (b"0-1", 100, None),
    (b"bytes=\xd9\xa1-\xd9\xa2", 100, None),  # Arabic-Indic digits are not digits here
    (b"bytes=" + b"9" * 5000 + b"-", 100, None),
])
def test_parse_range(value, size, expected):
    assert parse_range(value, size) == expected


@pytest.mark.parametrize(("header", "weak", "expected"), [
    (b'"abc-64"', False, True),
    (b'"abc-64"', True, True),
    (b'W/"abc-64"', True, True),
    (b'W/"abc-64"', False, False),
    (b'"x" , "abc-64"', False, True),
    (b'"abc"', True, False),
    (b"*", False, True),
    (b"abc-64", True, False),  # unquoted: malformed
    (b'"x", junk, "abc-64"', True, False),
])
def test_etag_matches(header, weak, expected):
    assert etag_matches(header, ETAG.encode(), weak=weak) is expected


@pytest.mark.parametrize("value", [
    b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
    b"Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
    b"Sun Nov  6 08:49:37 1994",  # asctime
])
def test_parse_http_date_formats(value):
    assert parse_http_date(value) == MTIME


@pytest.mark.parametrize("value", [None, b"", b"garbage", b"Sun, 99 Nov 1994 08:49:37 GMT"])
def test_parse_http_date_invalid(value):
    assert parse_http_date(value) is None


def test_http_date_and_etag_shapes():
    assert http_date(MTIME) == DATE.encode()
    assert make_etag(0x10, 0x20) == b'"10-20"'
    assert make_etag(0x10, 0x20, "br") == b'"10-20-br"'


@pytest.mark.parametrize(("accept_encoding", "available", "expected"), [
    (None, ("br", "gzip"), None),
    (b"", ("br", "gzip"), None),
    (b"gzip, deflate, br", ("br", "gzip"), "br"),
    (b"gzip, deflate, br", ("gzip",), "gzip"),
    (b"gzip", ("br", "gzip"), "gzip"),
    (b"br;q=0.5, gzip", ("br", "gzip"), "gzip"),
    (b"br;q=1.0, gzip;q=1", ("br", "gzip"), "br"),
    (b"br;q=0, gzip;q=0", ("br", "gzip"), None),
    (b"*", ("br", "gzip"), "br"),
    (b"*;q=0.1, gzip;q=0.5", ("br", "gzip"), "gzip"),
    (b"*;q=0", ("br", "gzip"), None),
    (b"x-gzip", ("gzip",), "gzip"),
    (b"identity", ("br", "gzip"), None),
    (b"identity;q=1, br;q=0.5", ("br",), None),
    (b"BR", ("br",), "br"),
    (b"br;q=abc", ("br",), None),
    (b"br;q=2", ("br",), None),
])
def test_choose_encoding(accept_encoding, available, expected):
    assert choose_encoding(accept_encoding, available) == expected


def test_qlist_first_occurrence_wins():
    assert qlist(b"gzip;q=0.2, gzip;q=1, br ; q = 0.7") == {"gzip": 0.2, "br": 0.7}


@pytest.mark.parametrize(("accept", "expected"), [
    (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
    (b"TEXT/HTML", True),
    (b"*/*", False),
    (b"text/*", False),
    (b"text/html;q=0", False),
    (None, False),
])
def test_accepts_html(accept, expected):
    assert accepts_html(accept) is expected
