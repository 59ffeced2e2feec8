"""Validators, preconditions and byte ranges: which status, which bytes.

Pure: from a file's validators and the request's header values to an
``Outcome`` (status and the byte span to send). No files, no sockets. The
evaluation order is RFC 9110 §13.2.2; ranges follow §14.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from email.utils import formatdate, parsedate_to_datetime

GetHeader = Callable[[bytes], "bytes | None"]

OK, PARTIAL, NOT_MODIFIED, PRECONDITION_FAILED, NOT_SATISFIABLE = 200, 206, 304, 412, 416

# What ``parse_range`` returns for a range no byte of the file satisfies (a
# real span always has end > start, so it cannot be confused with one).
UNSATISFIABLE = (0, 0)

# One entity-tag of a list (RFC 9110 §8.8.3): optional W/ then a quoted opaque tag.
_ETAG = re.compile(rb'\s*(W/)?"([^"]*)"\s*(?:,|$)')
# One range-spec (RFC 9110 §14.1.1); ASCII digits only (str \d would take any script).
_RANGE_SPEC = re.compile(rb"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")


@dataclass(frozen=True, slots=True)
class Validators:
    etag: bytes  # with its quotes: b'"5f3a-1c"'
    mtime: int  # whole seconds, as Last-Modified says
    size: int


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    start: int = 0
    end: int = 0  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start


def make_etag(mtime_ns: int, size: int, coding: str | None = None) -> bytes:
    """A strong ETag from modification time and size (nginx's recipe, in ns).

    Each encoding of a file is its own representation, so it gets its own tag
    (RFC 9110 §8.8.3: a strong tag changes with the content coding).
    """
    tag = f"{mtime_ns:x}-{size:x}"
    if coding:
        tag += f"-{coding}"
    return b'"' + tag.encode() + b'"'


def http_date(timestamp: float) -> bytes:
    """IMF-fixdate (RFC 9110 §5.6.7)."""
    return formatdate(timestamp, usegmt=True).encode()


def parse_http_date(value: bytes | None) -> int | None:
    """Seconds since the epoch, or None when ``value`` is not an HTTP-date.

    Accepts the three formats RFC 9110 §5.6.7 requires recipients to read.
    """
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime carries no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


def etag_matches(header: bytes, etag: bytes, *, weak: bool) -> bool:
    """Does the If-Match/If-None-Match list ``header`` name ``etag``?

    ``weak``: the weak comparison of RFC 9110 §8.8.3.2 (If-None-Match);
    otherwise strong (If-Match, If-Range), where a W/ tag never matches.
    """
    if header.strip() == b"*":
        return True
    opaque = etag.strip(b'"')
    pos = 0
    while pos < len(header):
        m = _ETAG.match(header, pos)
        if m is None:
            return False  # malformed list: nothing in it can be trusted to match
        if m.group(2) == opaque and (weak or not m.group(1)):
            return True
        pos = m.end()
    return False


def parse_range(value: bytes, size: int) -> tuple[int, int] | None:
    """One byte range of a ``Range`` value as ``(start, end_exclusive)``.

    None: ignore the header and send the whole file (another unit, bad syntax,
    or several ranges: RFC 9110 §14.2 lets a server ignore Range, and one
    200 is cheaper and safer than multipart/byteranges). ``UNSATISFIABLE``:
    no byte of the file is in the range (416).
    """
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    m = _RANGE_SPEC.fullmatch(spec)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    try:
        if first:
            start = int(first)
            end = int(last) + 1 if last else size
            if last and end <= start:
                return None  # last-pos < first-pos: invalid, so ignored (§14.1.1)
            if start >= size:
                return UNSATISFIABLE
            return start, min(end, size)
        if not last:
            return None  # "bytes=-"
        suffix = int(last)
    except ValueError:
        return None  # digits beyond int() limits: not a range anyone can mean
    if suffix == 0 or size == 0:
        return UNSATISFIABLE  # §14.1.1: a zero-length suffix or representation cannot be satisfied
    return max(size - suffix, 0), size


def _if_range_holds(value: bytes, v: Validators) -> bool:
    """RFC 9110 §13.1.5: the range applies only to the representation the client has."""
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return etag_matches(value, v.etag, weak=False)
    date = parse_http_date(value)
    return date is not None and date == v.mtime


def _preconditions(method: str, get: GetHeader, v: Validators) -> int | None:
    """Steps 1-4 of RFC 9110 §13.2.2; a status to answer with, or None to go on."""
    if_match = get(b"if-match")
    if if_match is not None:
        if not etag_matches(if_match, v.etag, weak=False):
            return PRECONDITION_FAILED
    else:
        since = parse_http_date(get(b"if-unmodified-since"))
        if since is not None and v.mtime > since:
            return PRECONDITION_FAILED
    safe = method in ("GET", "HEAD")
    if_none_match = get(b"if-none-match")
    if if_none_match is not None:
        if etag_matches(if_none_match, v.etag, weak=True):
            return NOT_MODIFIED if safe else PRECONDITION_FAILED
    elif safe:
        # §13.1.3: ignored when If-None-Match is present or the date is invalid.
        since = parse_http_date(get(b"if-modified-since"))
        if since is not None and v.mtime <= since:
            return NOT_MODIFIED
    return None


def evaluate(method: str, get: GetHeader, v: Validators) -> Outcome:
    """The status and byte span for a GET/HEAD of a file with validators ``v``.

    ``get(name)`` returns a request header value (lower-case name) or None.
    HEAD is evaluated like GET so that its head is the one GET would send
    (RFC 9110 §9.3.2).
    """
    full = Outcome(OK, 0, v.size)
    status = _preconditions(method, get, v)
    if status is not None:
        return Outcome(status)
    value = get(b"range")
    if value is None or method not in ("GET", "HEAD"):
        return full
    if_range = get(b"if-range")
    if if_range is not None and not _if_range_holds(if_range, v):
        return full
    span = parse_range(value, v.size)
    if span is None:
        return full
    if span == UNSATISFIABLE:
        return Outcome(NOT_SATISFIABLE)
    return Outcome(PARTIAL, span[0], span[1])
