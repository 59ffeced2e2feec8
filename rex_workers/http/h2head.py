"""HTTP/2 header lists: a request's into a ``Request``, a response's out of a ``Response``.

Pure policy (no sockets, no h2 state): ``serve.h2conn`` hands the decoded
header list of a HEADERS frame here. The rules are RFC 9113 §8.1 to §8.3; a list
that breaks them is *malformed*, which is a stream error of type
PROTOCOL_ERROR (``Malformed``): the stream is reset and nothing is
forwarded. A list that is well formed but unacceptable for the same reasons
an HTTP/1.1 head would be (a bad Host value, a singleton field repeated with
another value, over ``limits``) gets the same 4xx as on HTTP/1.1
(``HTTPError``). h2's own header validation is off: these checks replace it
so that each fault is a stream error, not the connection's end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from .authority import authority_error, host_only
from .framing import TRAILER_FORBIDDEN, Fields
from .message import Header
from .request import HTTPError, Request

# RFC 9113 §8.2.2: fields that only mean something to one HTTP/1.1 connection.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"})
# Preconditions and Range: without any, static files skip evaluating them.
CONDITIONAL = frozenset({b"if-match", b"if-none-match", b"if-modified-since",
                         b"if-unmodified-since", b"if-range", b"range"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# A field name: lower-case token characters only (RFC 9113 §8.2.1, RFC 9110 §5.1).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# A field value: no NUL, CR or LF anywhere, no whitespace at either end (§8.2.1).
_VALUE = re.compile(rb"(?:[^\x00\r\n\t ](?:[^\x00\r\n]*[^\x00\r\n\t ])?)?")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# An origin-form target as it may go on an HTTP/1.1 request line: visible ASCII only
# (RFC 9112 §3.2; a space would split the line, a fragment is never sent).
_PATH = re.compile(rb"/[!\"$-~]*")


class Malformed(HTTPError):
    """A malformed request (RFC 9113 §8.1.1): reset the stream with PROTOCOL_ERROR."""


class H2Limits:
    """The ``limits`` an HTTP/2 request head is held to, as an HTTP/1.1 head is."""

    __slots__ = ("field_bytes", "fields", "header_bytes")

    def __init__(self, header_bytes: int, fields: int, field_bytes: int) -> None:
        self.header_bytes = header_bytes
        self.fields = fields
        self.field_bytes = field_bytes


def request(fields: Sequence[Header], end_stream: bool, limits: H2Limits,
            client_addr: tuple[str, int], server_port: int, scheme: str) -> Request:
    """The ``Request`` a HEADERS frame opens, or ``Malformed`` / ``HTTPError``."""
    pseudo: dict[bytes, bytes] = {}
    regular = True
    checked = Fields(limits.header_bytes, 400, limits.fields, limits.field_bytes)
    cookies: list[bytes] = []
    host_field = None
    conditional = False
    for name, value in fields:
        if name[:1] == b":":
            if not regular or name not in _REQUEST_PSEUDO or name in pseudo:
                raise Malformed(f"pseudo-header {name.decode('latin-1')!r} unknown, "
                                f"repeated or after a regular field")
            pseudo[name] = value
            continue
        regular = False
        if not _NAME.fullmatch(name):
            raise Malformed(f"field name {name!r} not lower-case token characters")
        if not _VALUE.fullmatch(value):
            raise Malformed(f"field {name.decode()}: value with NUL, CR, LF or edge whitespace")
        if name in CONNECTION_SPECIFIC:
            raise Malformed(f"connection-specific field {name.decode()}")
        if name == b"te" and value != b"trailers":
            raise Malformed("te other than trailers")
        if name == b"cookie":
            # §8.2.3: cookie crumbs are joined into one field for HTTP/1.1 (and counted).
            checked.check(len(value) + 10, checked.size + len(value) + 10, len(checked.headers))
            checked.size += len(value) + 10
            cookies.append(value)
            continue
        if name == b"host":
            host_field = value
        elif name in CONDITIONAL:
            conditional = True
        checked.add(name, value)
    method = pseudo.get(b":method")
    if method is None or not _METHOD.fullmatch(method):
        raise Malformed("missing or invalid :method")
    if method == b"CONNECT":
        # Plain CONNECT (no :scheme, :path) asks for a tunnel; extended CONNECT needs
        # SETTINGS_ENABLE_CONNECT_PROTOCOL, which Rex does not send (docs/http2.md).
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            raise Malformed("CONNECT with :scheme or :path, or without :authority")
        raise HTTPError("CONNECT is not supported by a reverse proxy", 405)
    target = pseudo.get(b":path")
    if b":scheme" not in pseudo or not target:
        raise Malformed("missing :scheme or :path")
    if target == b"*":
        if method != b"OPTIONS":
            raise Malformed("asterisk :path for a method other than OPTIONS")
    elif not _PATH.fullmatch(target):
        raise HTTPError("request target must be an absolute path", 400)
    authority = pseudo.get(b":authority", host_field)
    if authority is not None:
        if why := authority_error(authority):
            raise HTTPError(f"invalid :authority: {why}", 400)
        if host_field is not None and host_field != authority:
            # §8.3.1: a Host that names another entity than :authority.
            raise HTTPError("Host differs from :authority", 400)
    if checked.hosts > 1:
        raise HTTPError("repeated Host header", 400)
    content_length = checked.content_length
    if end_stream and content_length:
        raise Malformed("content-length with no DATA to follow")
    headers = checked.headers
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if authority is not None and host_field is None:
        # Responders (and HTTP/1.1 upstreams) read the host from a Host field.
        headers.insert(0, (b"host", authority))
    raw_path, _, query = target.partition(b"?")
    return Request(
        method=method.decode("ascii"),
        target=target,
        path="",  # set by the listener (urlpath.normalize), as for HTTP/1.1
        query=query,
        version="2.0",
        headers=headers,
        host=host_only(authority) if authority else "",
        keep_alive=True,
        content_length=content_length,
        # A body of unknown length may follow: framed as chunked toward HTTP/1.1.
        chunked=not end_stream and content_length is None,
        client_addr=client_addr,
        server_port=server_port,
        scheme=scheme,
        raw_path=raw_path,
        conditional=conditional,
    )


def trailers(fields: Sequence[Header]) -> list[Header]:
    """A request's trailer section: regular, well-formed fields that trailers may carry."""
    out = []
    for name, value in fields:
        if name[:1] == b":" or not _NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            raise Malformed("pseudo-header or malformed field in trailers")
        if name in CONNECTION_SPECIFIC or name in TRAILER_FORBIDDEN:
            raise Malformed(f"field {name.decode()} not allowed in trailers")
        out.append((name, value))
    return out


def response(status: int, headers: Sequence[Header], length: int | None) -> list[Header]:
    """The header list of a response head: ``:status`` first, names lower-cased,
    connection-specific fields left out, ``content-length`` when it is known."""
    out = [(b":status", b"%d" % status)]
    out += ((name, value) for name, value in _lowered(headers) if name != b"content-length")
    # A HEAD or 304 answer states the length a GET would have had (RFC 9110 §8.6).
    if length is not None and status >= 200 and status != 204:
        out.append((b"content-length", b"%d" % length))
    return out


def trailer_fields(fields: Sequence[Header]) -> list[Header]:
    """Response trailers for an HTTP/2 client: lower-case names, no framing fields."""
    return [(name, value) for name, value in _lowered(fields) if name not in TRAILER_FORBIDDEN]


def _lowered(fields: Sequence[Header]) -> Iterator[Header]:
    """Fields as bytes with lower-case names, connection-specific ones left out."""
    for name, value in fields:
        if type(name) is str:
            name = name.encode("latin-1")
        if type(value) is str:
            value = value.encode("latin-1")
        name = name.lower()
        if name not in CONNECTION_SPECIFIC:
            yield name, value
