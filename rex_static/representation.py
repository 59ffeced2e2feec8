"""One servable representation of a file, with its response header lines pre-built.

Pure: from a stat result and the site's options to bytes. The header lines
that never change while the file does not (validators, type, caching) are
built once per file version and cached with it; only the status line,
``Date``, the length and ``Connection`` are added per response.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .conditional import Validators, http_date, make_etag

_STATUS_LINES = {
    200: b"HTTP/1.1 200 OK\r\n",
    206: b"HTTP/1.1 206 Partial Content\r\n",
    304: b"HTTP/1.1 304 Not Modified\r\n",
}

_CODING_NAMES = {"br": b"br", "gzip": b"gzip"}


@dataclass(slots=True)
class Representation:
    """A file (or its .br/.gz sibling) as one HTTP representation."""

    real: str
    identity: tuple[int, int, int, int]  # files.identity() of the stat it was built from
    content_type: bytes
    coding: str | None
    validators: Validators
    vary: bool
    # RFC 9110 §15.4.5: a 304 carries the fields a cache must update
    # (ETag, Last-Modified, Cache-Control, Vary), not the content's metadata.
    validator_lines: bytes
    content_lines: bytes  # Content-Type, Content-Encoding, Accept-Ranges
    content: bytes | None = None  # the whole body, for small files

    @property
    def size(self) -> int:
        return self.validators.size


def describe(real: str, st: os.stat_result, identity: tuple[int, int, int, int], *,
             content_type: bytes, coding: str | None, cache_control: str | None,
             vary: bool, now: float) -> Representation:
    """The representation of the file ``real`` as ``st`` describes it."""
    # RFC 9110 §8.8.2.1: Last-Modified must not be later than the response's Date.
    mtime = min(int(st.st_mtime), int(now))
    etag = make_etag(st.st_mtime_ns, st.st_size, coding)
    validators = [b"ETag: " + etag, b"Last-Modified: " + http_date(mtime)]
    if cache_control:
        validators.append(b"Cache-Control: " + cache_control.encode("latin-1"))
    if vary:
        # RFC 9110 §12.5.5: the body depends on Accept-Encoding, for every response.
        validators.append(b"Vary: Accept-Encoding")
    content = [b"Content-Type: " + content_type]
    if coding:
        content.append(b"Content-Encoding: " + _CODING_NAMES[coding])
    content.append(b"Accept-Ranges: bytes")
    return Representation(
        real=real,
        identity=identity,
        content_type=content_type,
        coding=coding,
        validators=Validators(etag, mtime, st.st_size),
        vary=vary,
        validator_lines=b"".join(line + b"\r\n" for line in validators),
        content_lines=b"".join(line + b"\r\n" for line in content),
    )


def head(status: int, lines: bytes, *, date: bytes, keep_alive: bool) -> bytes:
    """A complete response head: status line, Server, Date, ``lines``, Connection."""
    return b"".join((
        _STATUS_LINES[status],
        b"Server: rex\r\nDate: ", date, b"\r\n",
        lines,
        b"" if keep_alive else b"Connection: close\r\n",
        b"\r\n",
    ))


def body_lines(rep: Representation, start: int, end: int, partial: bool) -> bytes:
    """The header lines of a 200 or 206 carrying bytes ``[start, end)`` of ``rep``."""
    lines = [rep.validator_lines, rep.content_lines, b"Content-Length: %d\r\n" % (end - start)]
    if partial:
        lines.append(b"Content-Range: bytes %d-%d/%d\r\n" % (start, end - 1, rep.size))
    return b"".join(lines)
