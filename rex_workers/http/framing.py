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
    """Field lines of one head (or trailer section): framing facts and size budgets.

    ``limit`` bounds the bytes of all field lines; a client's head (``status``
    400) also has ``count`` (field lines) and ``line`` (bytes of one field line)
    limits, and its singleton fields may not repeat with another value.
    """

    __slots__ = (
        "chunked",
        "codings",
        "content_length",
        "count",
        "headers",
        "host",
        "hosts",
        "limit",
        "line",
        "singles",
        "size",
        "status",
    )

    def __init__(self, limit: int, status: int, count: int = 0, line: int = 0) -> None:
        self.limit = limit
        self.status = status  # 400 for clients, 502 for upstreams
        self.count = count or limit  # no more field lines than bytes: no bound of its own
        self.line = line or limit
        self.reset()

    def reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.codings: list[bytes] = []
        self.host = b""
        self.hosts = 0
        self.singles: dict[bytes, bytes] | None = None  # singleton name -> its value
        self.size = 0

    def too_large(self, what: str = "header fields too large") -> HTTPError:
        return HTTPError(what, 431 if self.status == 400 else 502)

    def check(self, size: int, total: int, lines: int) -> None:
        """A field line of ``size`` bytes, making ``total`` bytes and ``lines`` lines in all
        in its section (the head, or the trailers, which have limits of their own)."""
        if total > self.limit or size > self.line or lines > self.count:
            raise self.too_large("header fields too large" if total > self.limit
                                 else "header field too large" if size > self.line
                                 else "too many header fields")

    def add(self, name: bytes, value: bytes) -> None:
        # llhttp has already refused bad names, CR/LF/NUL in values, obs-fold and
        # whitespace before the colon; what is left are the rules about meaning.
        headers = self.headers
        size = len(name) + len(value) + 4
        self.size += size
        self.check(size, self.size, len(headers) + 1)
        if len(name) in _WATCHED_LENGTHS:
            lname = name.lower()
            if lname == b"content-length":
                self._content_length(value)
            elif lname == b"transfer-encoding":
                self._transfer_encoding(value)
            elif lname == b"host":
                self.hosts += 1
                self.host = value.strip()
            elif self.status == 400 and lname in SINGLETONS and self._repeated(lname, value):
                return  # the same value again: folded into the first line
        headers.append((name, value))

    def _repeated(self, lname: bytes, value: bytes) -> bool:
        """Whether a singleton field came before; a different value is refused."""
        singles = self.singles
        if singles is None:
            self.singles = {lname: value}
            return False
        first = singles.get(lname)
        if first is None:
            singles[lname] = value
            return False
        if first != value:
            # RFC 9110 §5.3: only list-based fields may be repeated; two values of a
            # singleton leave the meaning to whichever one a recipient picks.
            raise HTTPError(f"{lname.decode()} repeated with different values", 400)
        return True

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
        codings = self.codings
        codings += (c.strip().lower() for c in value.split(b","))
        # RFC 9112 §6.3 item 4: chunked must be the final coding, and applied once
        # (§7.1). Several field lines make one list (RFC 9110 §5.3), so a coding
        # after chunked is refused at once; one missing yet is judged in ``finish``.
        if b"chunked" in codings[:-1]:
            raise HTTPError("Transfer-Encoding must end with a single chunked", self.status)
        self.chunked = codings[-1] == b"chunked"

    def finish(self) -> None:
        """At the end of the head: the transfer codings, all of their field lines read."""
        if self.codings:
            if not self.chunked:
                # Anything but chunked last leaves the body length unknowable.
                raise HTTPError("Transfer-Encoding must end with a single chunked", self.status)
            if len(self.codings) > 1:
                # gzip etc. under chunked: valid, but no upstream can be trusted to
                # understand it. RFC 9112 §6.1 says 501 for codings we do not do.
                raise HTTPError("transfer coding not implemented",
                                501 if self.status == 400 else self.status)


# RFC 9110 fields defined as one value (not a list) that a request may carry. Host
# and Content-Length are stricter still: any second line is refused (above).
SINGLETONS = frozenset({
    b"authorization", b"content-location", b"content-range", b"content-type", b"date",
    b"from", b"if-modified-since", b"if-range", b"if-unmodified-since", b"max-forwards",
    b"proxy-authorization", b"range", b"referer", b"user-agent",
})
# Names are lower-cased only when their length is one of these: most are not.
_WATCHED_LENGTHS = frozenset(
    len(n) for n in (b"content-length", b"transfer-encoding", b"host", *SINGLETONS))


class Response:
    """The head of one upstream response."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "upgrade",
        "version",
    )

    def __init__(self, status: int, version: str, headers: list[tuple[bytes, bytes]],
                 content_length: int | None, chunked: bool, keep_alive: bool,
                 upgrade: bool, reason: bytes = b"") -> None:
        self.status = status
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.reason = reason


class Reader:
    """What both directions share: event queue, trailers, and the quiet-bytes bound.

    httptools hands over a header line only when it is complete and buffers the
    pieces until then, so a single endless line would grow without limit. Bytes
    fed without any parser progress (no field, no body, no URL piece) are counted
    and refused beyond the head limit: memory stays bounded per connection.
    """

    def __init__(self, limit: int, status: int, count: int = 0, line: int = 0) -> None:
        self.events: deque = deque()
        self._fields = Fields(limit, status, count, line)
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
        fields = self._fields
        if self.in_head:
            fields.add(name, value)
            return
        # After the head, a field line can only be a trailer: llhttp reports them
        # here too (before its chunk-complete callback when the body is empty).
        trailers = self._trailers
        if trailers is None:
            trailers = self._trailers = []
        # A trailer section has the limits of a head, counted on its own.
        size = len(name) + len(value) + 4
        self._trailer_size += size
        fields.check(size, self._trailer_size, len(trailers) + 1)
        if name.lower() in TRAILER_FORBIDDEN:
            # RFC 9110 §6.5.1: fields that frame, route, authenticate or modify a
            # message must not be trailers. A client that sends one gets a 400 (its
            # request is refused before any of it is forwarded); an upstream's are
            # dropped, as the rest of its response is good.
            if fields.status == 400:
                raise HTTPError(f"{name.decode('latin-1')} in a trailer section", 400)
            return
        trailers.append((name, value))

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


# RFC 9110 §6.5.1's kinds of fields that may not be trailers, by name: message
# framing; routing; request modifiers (controls §7.6 and RFC 9110 §10.1,
# conditionals §13.1, authentication §11); response control data (§15, caching
# RFC 9111); how to process the content (Content-Encoding, -Type, -Range); Trailer
# itself. Plus the connection-specific fields (§7.6.1) and cookies, which are
# credentials like Authorization.
TRAILER_FORBIDDEN = frozenset({
    # framing and routing
    b"content-length", b"transfer-encoding", b"host",
    # controls
    b"cache-control", b"expect", b"max-forwards", b"pragma", b"range", b"te",
    # conditionals
    b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range",
    # authentication
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"authentication-info", b"proxy-authentication-info", b"cookie", b"set-cookie",
    # response control data
    b"age", b"expires", b"location", b"retry-after", b"vary",
    # processing of the content, and the list of trailers
    b"content-encoding", b"content-type", b"content-range", b"trailer",
    # connection-specific
    b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
})
