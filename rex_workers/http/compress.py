"""The compression filter: which responses are compressed on the fly, and their new head.

A ``Compress`` is a ``message.Filter`` for one scope's ``compress`` settings
(``config.model.Compression``): it looks at each response head once and, when
the response qualifies and the client accepts a coding it offers, rewrites the
head and returns the encoder for its body (``http.encoders``). The rules
(docs/compression.md), nginx's and Caddy's:

- never for HEAD, 1xx, 204, 206, or a response with ``Content-Range``, a
  ``Content-Encoding`` already, or ``Cache-Control: no-transform`` (RFC 9110
  §7.7); a 304 gets only the head the 200 would have (``Vary``, a weak ETag);
- only for the configured media types, and only at or above ``min_length``
  when the length is known (a body of unknown length is compressed);
- a response that qualifies says ``Vary: Accept-Encoding`` even when this client
  gets identity, since another client's copy would differ (RFC 9110 §12.5.5);
- a compressed response loses its length (the connection frames it: chunked,
  or close-delimited for HTTP/1.0), its ``Accept-Ranges`` (ranges of the coded
  bytes are not offered), and a strong ETag becomes weak (``W/``): the bytes
  differ from the identity representation's (RFC 9110 §8.8.1).

Pure policy over heads; the encoders hold the only per-response state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..config.model import Compression
from .codings import choose
from .encoders import ENCODERS, NAMES
from .message import BodyTransform, Response
from .request import Request

_CACHE_MAX = 256  # distinct header values remembered per filter (browsers send a few)
_MISS = object()
_VARY_VALUE = b"Accept-Encoding"


class MediaTypes:
    """Does a ``Content-Type`` value name one of ``patterns`` (``text/html``, ``text/*``,
    ``application/*+json``)? Parameters and case are ignored; answers are remembered."""

    __slots__ = ("_known", "_match")

    def __init__(self, patterns: Sequence[str]) -> None:
        alternatives = "|".join(re.escape(p.lower()).replace(r"\*", "[^/]*") for p in patterns)
        self._match = re.compile(f"(?:{alternatives})".encode()).fullmatch
        self._known: dict[bytes, bool] = {}

    def __call__(self, value: bytes) -> bool:
        known = self._known.get(value)
        if known is None:
            essence = value.split(b";", 1)[0].strip().lower()
            known = self._match(essence) is not None
            if len(self._known) < _CACHE_MAX:
                self._known[value] = known
        return known


class Compress:
    """The filter of one scope: see the module docstring."""

    __slots__ = ("_choices", "levels", "min_length", "offered", "types")

    def __init__(self, settings: Compression) -> None:
        # A coding the config names but this process cannot encode is not offered
        # (the config refuses br without its package; this is the second guard).
        self.offered = tuple(a for a in settings.algorithms if a in ENCODERS)
        self.levels = {"gzip": settings.gzip_level, "br": settings.br_level}
        self.min_length = settings.min_length
        self.types = MediaTypes(settings.types)
        self._choices: dict[bytes, str | None] = {}  # Accept-Encoding value -> coding

    def __call__(self, request: Request, response: Response) -> BodyTransform | None:
        status = response.status
        if request.method == "HEAD" or status < 200 or status == 204 or status == 206:
            return None
        length = response.length
        if length is not None and length < self.min_length and status != 304:
            return None
        headers = response.headers
        ctype = None
        etag = vary = -1
        for i, (name, value) in enumerate(headers):
            name = name.lower()
            if name == b"content-type":
                ctype = value
            elif name == b"etag":
                etag = i
            elif name == b"vary":
                vary = i if vary < 0 else vary
            elif name == b"content-encoding" or name == b"content-range":
                return None  # coded already, or a part: a coding would break its ranges
            elif name == b"cache-control" and b"no-transform" in value.lower():
                return None  # RFC 9110 §7.7: an intermediary must not transform it
        # No type: nothing to judge by, except on a 304, which usually has none.
        if (ctype is None and status != 304) or (ctype is not None and not self.types(ctype)):
            return None
        _vary(headers, vary)
        coding = self._choose(request)
        if coding is None:
            return None
        if etag >= 0:
            name, value = headers[etag]
            if not value.startswith(b"W/"):
                headers[etag] = (name, b"W/" + value)
        if status == 304:
            return None  # the head a compressed 200 would have had; no body to code
        headers[:] = [f for f in headers if f[0].lower() != b"accept-ranges"]
        headers.append((b"Content-Encoding", NAMES[coding]))
        response.length = None
        return ENCODERS[coding](self.levels[coding], length)

    def _choose(self, request: Request) -> str | None:
        accept = request.header(b"accept-encoding")
        if accept is None:
            return None
        coding = self._choices.get(accept, _MISS)
        if coding is _MISS:
            coding = choose(accept, self.offered)
            if len(self._choices) < _CACHE_MAX:
                self._choices[accept] = coding
        return coding


def _vary(headers: list, at: int) -> None:
    """Add Accept-Encoding to the response's Vary (the field at ``at``, or a new one)."""
    if at < 0:
        headers.append((b"Vary", _VARY_VALUE))
        return
    name, value = headers[at]
    listed = [v.strip().lower() for v in value.split(b",")]
    if b"*" not in listed and b"accept-encoding" not in listed:
        headers[at] = (name, value + b", " + _VARY_VALUE)


def filters(settings: Compression | None) -> tuple[Compress, ...]:
    """The filter stage's part for one scope: nothing when ``compress`` is off there."""
    return () if settings is None else (Compress(settings),)
