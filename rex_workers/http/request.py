"""The parsed head of one client request, as every responder sees it.

Built by the connection from httptools callbacks; read by routing, the proxy,
static files and WSGI. Also the two ways request handling fails: ``HTTPError``
before a response has started, ``Abort`` after. Pure data: no sockets, no gevent.
"""

from __future__ import annotations

from dataclasses import dataclass


class HTTPError(Exception):
    """A protocol problem that becomes exactly one response with ``status``.

    Raised anywhere in request handling; the connection handler is the one
    place that turns it into a page (h11's ``RemoteProtocolError`` idea).
    """

    status = 400
    close = True  # the connection cannot be trusted after this error

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        if status is not None:
            self.status = status
        self.reason = reason


class Abort(Exception):
    """The response had started when it could not be completed: cut the connection.

    Closing is the only way left to tell an HTTP/1.1 client that its response is
    incomplete (RFC 9112 §8); an HTTP/2 stream would be reset instead.
    """


@dataclass(slots=True)
class Request:
    method: str  # "GET"
    target: bytes  # the raw request target, byte for byte: b"/api/x?y=1"
    path: str  # decoded, dot-segments resolved: what routing matches ("/api/x")
    query: bytes  # raw query without "?" (b"" when none)
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]  # as received (names keep their case)
    host: str = ""  # Host without port, lower-cased ("" when absent)
    keep_alive: bool = True
    content_length: int | None = None
    chunked: bool = False
    upgrade: bool = False  # a valid Upgrade request (e.g. WebSocket)
    client_addr: tuple[str, int] = ("", 0)
    server_port: int = 0
    scheme: str = "http"
    raw_path: bytes = b""  # target without the query
    # May carry a precondition (If-*) or a Range: False only where the fast lane saw
    # the whole head and none of them, so static files skip evaluating them.
    conditional: bool = True
    # X-Request-ID: a trusted proxy's, else made by the connection (serve.conn); sent
    # upstream, returned to the client and logged.
    request_id: bytes = b""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def header(self, name: bytes) -> bytes | None:
        """First value of ``name`` (lower-case bytes), or None."""
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def is_websocket(req: Request) -> bool:
    """An Upgrade to WebSocket; other upgrades (h2c) are not tunnelled."""
    if not req.upgrade:
        return False
    value = req.header(b"upgrade") or b""
    return any(t.strip().lower() == b"websocket" for t in value.split(b","))


def printable(raw: bytes) -> str:
    """A path or target for a log line: plain ASCII as is, other bytes escaped.

    The parser has refused CR, LF and NUL already; escaping the rest keeps a
    hostile target from writing terminal escapes into someone's log viewer.
    """
    text = raw.decode("latin-1")
    return text if text.isascii() and text.isprintable() else repr(raw)[2:-1]
