"""The response seam: what a responder hands to a connection, and what it knows of one.

A responder (proxy, static files, WSGI, pages, redirects) describes one response
as a ``Response``: a status, the end-to-end header fields and a body source. It
never writes protocol bytes. The connection the request came on (a ``Stream``:
the HTTP/1.1 ``ClientConn`` today, an HTTP/2 stream later) alone chooses the
framing (Content-Length, chunked, close-delimited), keep-alive, HEAD and
204/304 body suppression, the write timeout, and the fast paths for large
bodies (sendfile for a ``FileRegion``, a raw pump for a ``SocketSpan``).

May: define the vocabulary both sides share. May not: touch sockets, import
gevent, or know any protocol's bytes. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .request import Request

Header = tuple[bytes, bytes]


class FileRegion:
    """Bytes ``[offset, offset + count)`` of an open file: sent with sendfile where it can be.

    The connection sends exactly ``count`` bytes or fails; a file that turns out
    shorter (truncated meanwhile) cuts the response (``Abort``). The descriptor
    belongs to whoever opened it: the connection never closes it.
    """

    __slots__ = ("count", "fd", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd = fd
        self.offset = offset
        self.count = count


class SocketSpan:
    """The next ``count`` bytes on ``sock`` belong to the body exactly as they are.

    A proxied body of known length: the connection may move them without a
    parser (a raw pump, or splice), waiting at most ``timeout`` seconds (None:
    the socket's own timeout) for each read. It consumes all ``count`` bytes or
    raises; the body that yielded the span learns nothing else.
    """

    __slots__ = ("count", "sock", "timeout")

    def __init__(self, sock, count: int, timeout: float | None) -> None:
        self.sock = sock
        self.count = count
        self.timeout = timeout


class Tunnel:
    """After a 101 (Switching Protocols): bytes both ways between the client and ``peer``.

    ``early`` are bytes already read from ``peer`` after its 101 head;
    ``protocol`` is the upgrade token (``websocket``).
    """

    __slots__ = ("early", "peer", "protocol")

    def __init__(self, peer, early: bytes = b"", protocol: bytes = b"websocket") -> None:
        self.peer = peer
        self.early = early
        self.protocol = protocol


# One piece of a streamed body. An empty ``bytes`` asks the connection to send
# what it holds now (a head with no body yet, as for Server-Sent Events).
Part = bytes | memoryview | FileRegion | SocketSpan
Body = bytes | memoryview | FileRegion | Tunnel | Iterable[Part] | None


class Response:
    """One response as a responder describes it; the connection frames and writes it.

    ``headers`` are end-to-end fields only, ``Date`` and ``Server`` included when
    the responder wants them (the origin of a response sends Date, RFC 9110
    §6.6.1); never ``Content-Length``, ``Transfer-Encoding`` or ``Connection``.
    ``length`` is the body's size when known (for a HEAD or 304 response, the
    size a GET would have had), None when unknown; when it is not passed, a
    ``bytes`` body or a ``FileRegion`` give theirs. A streamed body may carry ``trailers``
    (an attribute read once the body is done). ``close``: the responder wants
    the connection closed after this response. ``reason`` is an HTTP/1 reason
    phrase to keep (an upstream's); empty means the standard one. A body of
    None is pushed by the responder after ``Stream.start`` (``write``, ``end``).
    ``own``: a page Rex made itself (``http.pages``), which a configured error
    page, or a JSON body for an API client, may replace (``http.errorpages``).
    """

    __slots__ = ("body", "close", "headers", "length", "own", "reason", "status")

    def __init__(self, status: int, headers: list[Header], body: Body = b"",
                 length: int | EllipsisType | None = ..., *, reason: bytes = b"",
                 close: bool = False, own: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        if length is ...:  # not given: a bytes body or a file region tells it
            length = None
            kind = type(body)
            if kind is bytes or kind is memoryview:
                length = len(body)
            elif kind is FileRegion:
                length = body.count
        self.length = length
        self.reason = reason
        self.close = close
        self.own = own


class Outcome:
    """What became of one request: the access log's and the metrics' one record.

    The connection fills ``status`` and ``sent`` (body bytes) as it writes; the
    dispatcher and responders say who answered.
    """

    __slots__ = ("note", "route", "sent", "site", "status", "upstream", "upstream_time")

    def __init__(self) -> None:
        self.status = 0  # 0 until a response head was sent
        self.sent = 0
        self.site: int | None = None  # instance index
        self.route: str | None = None  # the pattern of the route that answered (metrics)
        self.upstream = "-"  # upstream address or "wsgi:app", for the access log
        self.upstream_time: float | None = None
        self.note = ""  # why a responder refused (for the error log; never to the client)


class BodyTransform(Protocol):
    """A body filter's state for one response: bytes in, bytes out, as they stream."""

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


# The filter stage (docs/architecture.md): a filter looks at a response head
# on its way to the client, may change its status, headers or length in
# place, and returns a transform for the body (None: the body passes as is).
Filter = Callable[["Request", Response], "BodyTransform | None"]
# The request stage: a rule looks at a request before dispatch and answers it
# (401, 403, 429, a redirect…) or lets it through (None).
RequestRule = Callable[["Request"], "Response | None"]


class Stream(Protocol):
    """What a responder knows of the connection its request came on.

    ``respond`` sends a whole response. A responder that produces its body by
    pushing (a WSGI app's ``write()``) uses ``start``, ``write`` and ``end``
    instead; the head goes out with the first ``write`` (or at ``end``).
    Failures: a body source that cannot complete raises ``Abort`` and the
    connection cuts the response; a client that goes away raises ``OSError``.
    """

    request: Request
    outcome: Outcome
    filters: Sequence[Filter]
    # The error pages of the site or route answering (``http.errorpages.ErrorPages``),
    # for Rex's own error responses; None: the built-in pages.
    error_pages: object

    def respond(self, response: Response) -> None: ...

    # A 200-like response whose head is rendered up to its last end-to-end field
    # (a static site's ready small file): sent as ``respond`` would, in one step.
    # Only when ``filters`` is empty.
    def respond_ready(self, status: int, head: bytes, body: bytes, length: int) -> None: ...

    def start(self, response: Response) -> None: ...

    def write(self, data: bytes) -> None: ...

    def end(self, trailers: Sequence[Header] = ()) -> None: ...

    def interim(self, status: int, headers: list[Header], reason: bytes = b"") -> None: ...

    # -- the request body -------------------------------------------------------
    def body(self) -> Iterator[bytes]: ...

    def buffered_body(self) -> list[bytes] | None: ...

    def body_pending(self) -> bool: ...

    def expect_continue(self) -> None: ...

    @property
    def trailers(self) -> list[Header]: ...

    def local_address(self) -> str: ...

    def log_error(self, message: str) -> None: ...
