"""What both HTTP/1.1 readers share: event kinds, framing rules, size budgets.

Pure code over parsed field lines: the Content-Length and Transfer-Encoding
rules a proxy must be strict about (RFC 9112 §6.3), the byte budget of a head
or trailer section, and the reader base that queues events and refuses bytes
that make the parser buffer without progress. No sockets, no gevent; the
readers themselves are in ``h1read``.
"""

from __future__ import annotations

from collections import deque

from .request import HTTPError

# Event kinds. Tuples (kind, payload) in a deque: cheap on the hot path.
HEAD = 1  # payload: Request (client side) or Response (upstream side)
BODY = 2  # payload: bytes of body, already de-chunked
END = 3  # payload: list of trailer fields
INFO = 4  # upstream 1xx interim response (payload: Response)
UPGRADE = 5  # payload: bytes that followed the head (tunnel data)
FAIL = 6  # payload: HTTPError for bytes that came after the requests queued before it

class Fields:
    """Field lines of one head (or trailer section): framing facts and a size budget."""

    __slots__ = (
        "chunked",
        "codings",
        "content_length",
        "headers",
        "hosts",
        "limit",
        "size",
        "status",
    )

    def __init__(self, limit: int, status: int) -> None:
        self.limit = limit
        self.status = status  # 400 for clients, 502 for upstreams
        self.reset()

    def reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.codings: list[bytes] = []
        self.hosts = 0
        self.size = 0

    def too_large(self) -> HTTPError:
        return HTTPError("header fields too large", 431 if self.status == 400 else 502)

    def add(self, name: bytes, value: bytes) -> None:
        # llhttp has already refused bad names, CR/LF/NUL in values, obs-fold and
        # whitespace before the colon; what is left are the rules about meaning.
        self.size += len(name) + len(value) + 4
        if self.size > self.limit:
            raise self.too_large()
        self.headers.append((name, value))
        if len(name) in _SPECIAL_LENGTHS:
            lname = name.lower()
            if lname == b"content-length":
                self._content_length(value)
            elif lname == b"transfer-encoding":
                self._transfer_encoding(value)
            elif lname == b"host":
                self.hosts += 1

    def _content_length(self, value: bytes) -> None:
        # RFC 9112 §6.3 item 5: a list or repeated value is unrecoverable framing.
        if self.content_length is not None or self.codings:
            raise HTTPError("repeated Content-Length or Content-Length with Transfer-Encoding",
                            self.status)
        value = value.strip()
        if not value.isdigit() or len(value) > 18:
            raise HTTPError("invalid Content-Length", self.status)
        self.content_length = int(value)

    def _transfer_encoding(self, value: bytes) -> None:
        if self.content_length is not None:
            # RFC 9112 §6.1: a sender must not send both; treat it as an attack.
            raise HTTPError("Transfer-Encoding with Content-Length", self.status)
        self.codings += (c.strip().lower() for c in value.split(b","))
        codings = self.codings
        # RFC 9112 §6.3 item 4: chunked must be the final coding, and applied once
        # (§7.1); anything else leaves the body length unknowable.
        if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
            raise HTTPError("Transfer-Encoding must end with a single chunked", self.status)
        if len(codings) > 1:
            # gzip etc. under chunked: valid, but no upstream can be trusted to
            # understand it. RFC 9112 §6.1 says 501 for codings we do not do.
            raise HTTPError("transfer coding not implemented",
                            501 if self.status == 400 else self.status)
        self.chunked = True


_SPECIAL_LENGTHS = frozenset({len(b"content-length"), len(b"transfer-encoding"), len(b"host")})


class Reader:
    """What both directions share: event queue, trailers, and the quiet-bytes bound.

    httptools hands over a header line only when it is complete and buffers the
    pieces until then, so a single endless line would grow without limit. Bytes
    fed without any parser progress (no field, no body, no URL piece) are counted
    and refused beyond the head limit: memory stays bounded per connection.
    """

    def __init__(self, limit: int, status: int) -> None:
        self.events: deque = deque()
        self._fields = Fields(limit, status)
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._trailer_size = 0
        self._ticks = 0  # field lines and URL pieces seen: parser progress
        self._quiet = 0  # bytes fed since the last progress
        self.in_head = False

    def release(self) -> None:
        """Drop the parser: it and this reader hold each other (httptools keeps our
        bound methods), a cycle only the garbage collector would otherwise free."""
        self._parser = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self._ticks += 1
        if self._trailers is None:
            self._fields.add(name, value)
            return
        # Trailer fields share the head's budget; framing and routing fields may
        # not be sent there (RFC 9110 §6.5.1), so they are dropped, not relayed.
        self._trailer_size += len(name) + len(value) + 4
        if self._trailer_size > self._fields.limit:
            raise self._fields.too_large()
        if name.lower() not in TRAILER_FORBIDDEN:
            self._trailers.append((name, value))

    def on_chunk_complete(self) -> None:
        # After the last chunk llhttp reports trailer fields through on_header.
        if self._trailers is None:
            self._trailers = []

    def on_body(self, body: bytes) -> None:
        self.events.append((BODY, body))

    def _account(self, size: int, ticks: int, events: int) -> None:
        """After a feed: count it as quiet unless the parser made progress."""
        if self._ticks != ticks or len(self.events) != events:
            self._quiet = 0
            return
        self._quiet += size
        if self._quiet > self._fields.limit:
            if self.in_head:
                raise self._fields.too_large()
            raise HTTPError("field line or chunk metadata too long", self._fields.status)


TRAILER_FORBIDDEN = frozenset({
    b"content-length", b"transfer-encoding", b"host", b"connection", b"keep-alive",
    b"te", b"trailer", b"upgrade", b"proxy-connection", b"content-type", b"content-encoding",
    b"content-range", b"authorization", b"set-cookie", b"cookie",
})
