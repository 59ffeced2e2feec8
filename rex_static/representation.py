"""One servable representation of a file, with its response header fields pre-built.

Pure: from a stat result and the site's options to header fields. The fields
that never change while the file does not (validators, type, caching) are
built once per file version and cached with it; only ``Server``, ``Date`` and
``Content-Range`` are added per response (and the connection adds the length
and framing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rex_workers.http.message import Header

from .conditional import Validators, http_date, make_etag

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
    validator_fields: list[Header]
    content_fields: list[Header]  # Content-Type, Content-Encoding, Accept-Ranges
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
    validators = [(b"ETag", etag), (b"Last-Modified", http_date(mtime))]
    if cache_control:
        validators.append((b"Cache-Control", cache_control.encode("latin-1")))
    if vary:
        # RFC 9110 §12.5.5: the body depends on Accept-Encoding, for every response.
        validators.append((b"Vary", b"Accept-Encoding"))
    content = [(b"Content-Type", content_type)]
    if coding:
        content.append((b"Content-Encoding", _CODING_NAMES[coding]))
    content.append((b"Accept-Ranges", b"bytes"))
    return Representation(
        real=real,
        identity=identity,
        content_type=content_type,
        coding=coding,
        validators=Validators(etag, mtime, st.st_size),
        vary=vary,
        validator_fields=validators,
        content_fields=content,
    )


def content_range(rep: Representation, start: int, end: int) -> Header:
    """The ``Content-Range`` of a 206 carrying bytes ``[start, end)`` of ``rep``."""
    return (b"Content-Range", b"bytes %d-%d/%d" % (start, end - 1, rep.size))
