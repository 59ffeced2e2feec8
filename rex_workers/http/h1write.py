"""HTTP/1.1 responses as bytes: the framing choice and the head, for every responder.

Pure: from a ``Response``'s status, fields and length, the request's method and
version, and the connection's keep-alive wish to the bytes of the head, plus
the chunk and trailer framing of the body. The one place where Rex decides how
an HTTP/1 body is delimited (RFC 9112 §6.3) and what ``Connection`` says. No
sockets, no gevent: the connection (``serve.conn``) sends what this returns.
"""

from __future__ import annotations

from collections.abc import Sequence

from .message import Header
from .pages import reason as reason_phrase

# How the body is delimited on the wire (RFC 9112 §6.3).
NO_BODY = "none"  # HEAD, 1xx, 204, 304: nothing follows the head
LENGTH = "length"  # Content-Length
CHUNKED = "chunked"  # HTTP/1.1 clients when the length is unknown
CLOSE = "close"  # HTTP/1.0 clients when the length is unknown: the close ends it

LAST_CHUNK = b"0\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"  # HTTP/1.0 clients close unless told
CLOSE_LINE, KEEP_ALIVE_LINE = _CLOSE, _KEEP_ALIVE  # for heads rendered ahead (respond_ready)
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
_FIELD = b": ".join  # (name, value) -> b"name: value"


def has_body(method: str, status: int) -> bool:
    """RFC 9110 §9.3.2, §15.3.5, §15.4.5: HEAD, 1xx, 204 and 304 responses have no content."""
    return method != "HEAD" and status >= 200 and status != 204 and status != 304


def framing(method: str, version: str, status: int, length: int | None,
            keep_alive: bool) -> tuple[str, bool]:
    """(how the body is delimited, whether the connection stays open after it)."""
    if method == "HEAD" or status < 200 or status == 204 or status == 304:  # ``has_body``
        return NO_BODY, keep_alive
    if length is not None:
        return LENGTH, keep_alive
    if version == "1.1":
        return CHUNKED, keep_alive
    return CLOSE, False  # RFC 9112 §6.3 rule 8: a 1.0 client reads until the close


def status_line(status: int, reason: bytes = b"") -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``; the standard phrases are made once."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        phrase = reason or reason_phrase(status).encode()
        line = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
        if len(_STATUS_LINES) < 256:  # an upstream's own phrases must not grow it forever
            _STATUS_LINES[(status, reason)] = line
    return line


def head(status: int, headers: Sequence[Header], *, mode: str, length: int | None,
         keep_alive: bool, version: str, reason: bytes = b"",
         upgrade: bytes | None = None) -> bytes:
    """The response head, ending with the blank line.

    ``length`` is announced with LENGTH framing, and also for a HEAD or 304
    answer (it describes the GET's representation, RFC 9110 §8.6), never on a
    1xx or 204. ``upgrade``: the protocol a 101 switches to.
    """
    key = (status, reason)
    # Bytes added in place, and the status line looked up without a call: every
    # response passes here.
    out = _STATUS_LINES[key] if key in _STATUS_LINES else status_line(status, reason)
    if headers:
        # One C-level pass over the fields (a Python loop costs twice as much).
        out += b"\r\n".join(map(_FIELD, headers)) + b"\r\n"
    if length is not None and status >= 200 and status != 204:
        out += b"Content-Length: %d\r\n" % length
    if mode == CHUNKED:
        out += b"Transfer-Encoding: chunked\r\n"
    if upgrade is not None:
        out += b"Connection: upgrade\r\nUpgrade: " + upgrade + b"\r\n"
    elif not keep_alive:
        out += _CLOSE
    elif version == "1.0":
        out += _KEEP_ALIVE
    return out + b"\r\n"


def interim(status: int, headers: Sequence[Header], reason: bytes = b"") -> bytes:
    """A 1xx head other than 101 (e.g. 103 Early Hints)."""
    out = [status_line(status, reason)]
    for name, value in headers:
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); ``data`` must not be empty."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def trailer_block(fields: Sequence[Header]) -> bytes:
    """The last chunk and trailer section that end a chunked body (RFC 9112 §7.1.2)."""
    if not fields:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(b"%b: %b\r\n" % f for f in fields) + b"\r\n"
