"""The HTTP/1.1 connection's response side: framing, keep-alive, and every write.

Socket code. ``H1Writer`` is what a responder's ``Response`` meets on an HTTP/1.1
connection (the response half of ``http.message.Stream``; ``ClientConn`` adds
the request half): it runs the filter stage when the dispatcher chose filters,
chooses framing and keep-alive with ``http.h1write``, suppresses bodies for HEAD,
1xx, 204 and 304, and sends bytes, file regions (sendfile) and raw spans (a
pump with one buffer). Every wait for the client is bounded by ``timeouts.read``
and, once the client has fallen behind, by ``limits.min_rate``; a streamed body
that can read ahead (``stalled``) is told when that happens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gevent.socket import wait_write

from rex_static.sendfile import more_flag, send_file

from ..http import deadline, errorpages, filters, h1write
from ..http.filters import Chain
from ..http.h1write import CHUNKED, LENGTH, NO_BODY
from ..http.message import FileRegion, Filter, Header, Outcome, Response, SocketSpan, Tunnel
from ..http.request import Abort, Request, printable
from ..http.wire import BLOCK_SIZE, PlainSocket, send_all, send_now
from .tunnel import tunnel

_CRLF = b"\r\n"
# How long a client may keep its buffer full before it counts as slow: long enough
# for a busy machine to schedule a fast reader, short enough that an upstream
# serving one request at a time is not held long by each slow client.
STALL_GRACE = 0.01


class _Late(Exception):
    """The client made no room within ``STALL_GRACE``."""


class H1Writer:
    """The response side of one HTTP/1.1 connection (see the module docstring).

    The connection keeps ``sock``, ``ctx`` (timeouts, limits, draining, tunnels),
    the current ``request`` and ``outcome``, the ``filters`` chosen for it, and
    ``keep_alive``; it provides ``_body_done``, ``_take_upgrade_data`` and
    ``log_error``.
    """

    __slots__ = ("_chain", "_left", "_mode", "_pending", "_slow", "_slow_sent", "_source", "ctx",
                 "error_pages", "filters", "keep_alive", "outcome", "request", "sock")

    sock: object
    request: Request | None
    outcome: Outcome | None
    filters: Sequence[Filter]
    keep_alive: bool
    _body_done: bool

    def _init_response(self) -> None:
        """The response state a new connection starts with (``start`` sets it per response)."""
        self.request: Request | None = None
        self.outcome: Outcome | None = None
        self.filters: Sequence[Filter] = ()
        self.error_pages = None  # the answering scope's (``errorpages.ErrorPages``)
        self._mode = ""  # "" until a response head was committed
        self._pending = b""  # response bytes not sent yet (the head waits for the body)
        self._left = 0  # body bytes a Content-Length still allows
        self._chain: Chain | None = None
        self._source = None  # the streamed body being sent: told when the client stalls
        self._slow = 0.0  # when this response first had to wait for the client
        self._slow_sent = 0  # body bytes sent by then

    def start(self, response: Response) -> None:
        """Commit the head of ``response``; it goes out with the first body bytes."""
        req = self.request
        # Every response carries its request's id (an in-place add: no call on this path).
        response.headers += ((b"X-Request-ID", req.request_id),)
        self._chain = filters.start(self.filters, req, response) if self.filters else None
        ctx = self.ctx
        keep_alive = (self.keep_alive and req.keep_alive and self._body_done
                      and not response.close and not ctx.draining)
        mode, self.keep_alive = h1write.framing(req.method, req.version, response.status,
                                                response.length, keep_alive)
        self._mode = mode
        self._left = response.length or 0
        self._slow = 0.0
        self.outcome.status = response.status
        self._pending = h1write.head(response.status, response.headers, mode=mode,
                                     length=response.length, keep_alive=self.keep_alive,
                                     version=req.version, reason=response.reason)

    def write(self, data: bytes) -> None:
        """Body bytes of the started response; an empty write sends what is held."""
        if self._chain is not None:
            data = self._chain.feed(data)
        self._put(data, True)

    def end(self, trailers: Sequence[Header] = ()) -> None:
        """The body is complete: send what is held, the last chunk and trailers."""
        if self._chain is not None:
            tail, self._chain = self._chain.finish(), None
            self._put(tail, False)
        mode = self._mode
        out = self._pending
        self._pending = b""
        if mode == CHUNKED:
            out += h1write.trailer_block(trailers)
        elif mode == LENGTH and self._left:
            # The client would wait for bytes that never come: closing ends it.
            self._log_body(f"response body {self._left} bytes shorter than its Content-Length")
            self.keep_alive = False
        if out:
            self._send(out)

    def respond(self, response: Response) -> None:
        """Send ``response`` whole: head, then its body by the fastest path this socket has."""
        if response.own and response.status >= 400:
            # Rex's own error page: the site's page for it, or JSON for an API client.
            errorpages.replace_own(self.request, response, self.error_pages)
        body = response.body
        kind = type(body)
        if kind is Tunnel:
            self._tunnel(response, body)
            return
        self.start(response)
        if self._chain is not None:
            self._filtered(body)
            return
        if kind is bytes or kind is memoryview:
            self._put(body, False)  # goes out with the head, in one send
        elif kind is FileRegion:
            self._send_region(body)
        else:
            self._stream(body)
            self.end(getattr(body, "trailers", ()))
            return
        self.end()

    def respond_ready(self, status: int, head: bytes, body: bytes, length: int) -> None:
        """A whole response whose head is rendered up to its last end-to-end field.

        The bytes ``respond`` would send for the same response (``X-Request-ID``,
        ``Content-Length`` and ``Connection`` as ``h1write.head`` adds them), in
        one send and without its steps: for a static site's ready small files
        (``rex_static.ready``). Only when no filter is set (the caller checks).
        """
        req = self.request
        keep_alive = self.keep_alive = (self.keep_alive and req.keep_alive and self._body_done
                                        and not self.ctx.draining)
        self.outcome.status = status
        self._left = 0
        head += b"X-Request-ID: " + req.request_id + b"\r\nContent-Length: %d\r\n" % length
        if not keep_alive:
            head += h1write.CLOSE_LINE
        elif req.version == "1.0":
            head += h1write.KEEP_ALIVE_LINE
        if req.method == "HEAD":  # RFC 9110 §9.3.2: the GET's head, no content
            self._mode = NO_BODY
            self._send(head + _CRLF)
            return
        self._mode = LENGTH
        self.outcome.sent += length
        self._send(head + _CRLF + body)

    def _stream(self, parts) -> None:
        """A streamed source: bytes, file regions and raw spans as they come.

        Bytes are held when the source says it is ``done``, so they go out with
        the end of the body (one send for a small proxied answer). With no body
        to send (HEAD, 204, 304) the source is still run to its end: a proxied
        304 frees its upstream connection that way. A source with a ``stalled``
        method hears when the client falls behind (``_slowed``).
        """
        self._source = parts
        try:
            for part in parts:
                kind = type(part)
                if kind is bytes or kind is memoryview:
                    self._put(part, not getattr(parts, "done", False))
                elif kind is FileRegion:
                    self._send_region(part)
                else:
                    self._pump(part)
                if getattr(parts, "done", False):
                    break
        finally:
            self._source = None

    def _filtered(self, body) -> None:
        """A body the filter stage transforms, as bytes in bounded pieces.

        Each piece's output is sent as it comes (an event reaches the client at
        once), except a whole ``bytes`` body, or a streamed part its source says is
        the last (``done``): those go out with the end of the body, in one send.
        File regions and raw spans are read in blocks, each block sent on, so
        memory stays bounded whatever their size.
        """
        chain = self._chain
        kind = type(body)
        if kind is bytes or kind is memoryview:
            self._put(chain.feed(bytes(body)), False)
        else:
            self._source = body  # a source that reads ahead hears when the client stalls
            try:
                for part in (body,) if kind is FileRegion else body:
                    kind = type(part)
                    if kind is bytes or kind is memoryview:
                        self._put(chain.feed(bytes(part)), not getattr(body, "done", False))
                        continue
                    for data in filters.as_bytes((part,)):
                        self._put(chain.feed(data), True)
            finally:
                self._source = None
        self.end(getattr(body, "trailers", ()))

    def interim(self, status: int, headers: list[Header], reason: bytes = b"") -> None:
        """A 1xx before the response (e.g. 103 Early Hints); never to HTTP/1.0 clients."""
        if self.request.version == "1.1":
            self._send(h1write.interim(status, headers, reason))

    def _put(self, data, flush: bool) -> None:
        """Frame ``data`` after what is held; send it all now when ``flush``."""
        mode = self._mode
        if data and mode != NO_BODY:  # HEAD, 204, 304: the head is all there is to send
            size = len(data)
            if mode == LENGTH and size > self._left:
                # Extra bytes would be read as the next response (RFC 9112 §6.3).
                self._log_body(f"response body longer than its Content-Length; "
                               f"{size - self._left} bytes dropped")
                data = data[:self._left]
                size = self._left
            self._left -= size
            self.outcome.sent += size
            if mode == CHUNKED and data:
                data = b"%x\r\n%b\r\n" % (size, data)
            self._pending += data
        if flush and self._pending:
            data, self._pending = self._pending, b""
            self._send(data)

    def _send_region(self, region: FileRegion) -> None:
        """A file region with sendfile (a copy where the socket cannot: TLS)."""
        count = region.count
        if self._mode == NO_BODY:
            return
        if self._mode == LENGTH and count > self._left:
            self._log_body(f"response body longer than its Content-Length; "
                           f"{count - self._left} bytes dropped")
            count = self._left
        if not count:
            return
        if self._mode == CHUNKED:
            self._pending += b"%x\r\n" % count
        self._left -= count
        sock = self.sock
        head, self._pending = self._pending, b""
        if head:
            self._send(head, more_flag(sock))
        sent = send_file(sock, region.fd, region.offset, count, self._file_wait)
        self.outcome.sent += sent
        if sent < count:
            # Content-Length promised more than the file now holds: the only
            # honest end is to close the connection (RFC 9112 §6.3 framing).
            self._log_body(f"file shrank while being sent ({sent} of {count} bytes)")
            raise Abort()
        if self._mode == CHUNKED:
            self._pending = _CRLF

    def _pump(self, span: SocketSpan) -> None:
        """Relay ``span.count`` bytes from another socket as they come: no parser, one buffer.

        Reads never go past the span, so bytes the peer sends after it stay in
        its socket. A failed read cuts the response (``Abort``); a client that
        stops reading is cut by the write timeout.
        """
        left = span.count
        chunked = self._mode == CHUNKED
        if chunked:
            self._pending += b"%x\r\n" % left
        head, self._pending = self._pending, b""
        if head:
            self._send(head)
        buf = memoryview(bytearray(min(left, BLOCK_SIZE)))
        sock, recv_into, timeout = self.sock, span.sock.recv_into, span.timeout
        outcome = self.outcome
        while left:
            piece = buf[:left] if left < len(buf) else buf
            try:
                n = deadline.call(timeout, recv_into, piece)
            except OSError:  # TimeoutError included
                raise Abort() from None
            if not n:
                raise Abort()  # the peer closed in the middle of the body
            left -= n
            self._left -= n
            outcome.sent += n
            sent = send_now(sock, piece[:n])
            while sent < n:
                if self._keeps_up():
                    sent += send_now(sock, piece[sent:n])
                    continue
                # The client is slower than the peer. A source that reads ahead takes
                # over the rest of the span and what this piece still holds, so the
                # buffer is let go (not mid-chunk: the chunk size has gone out).
                if not chunked and self._slowed(left, piece[sent:n]):
                    # Those bytes come back from the source: not sent yet after all.
                    self._left += n - sent
                    outcome.sent -= n - sent
                    self._slow_sent = min(self._slow_sent, outcome.sent)
                    return
                self._slowed()
                self._send_rest(piece[sent:n])
                break
        if chunked:
            self._pending = _CRLF

    def _tunnel(self, response: Response, tun: Tunnel) -> None:
        """Send the 101 and what followed it, then pump until either side closes."""
        self.keep_alive = False
        self.outcome.status = response.status
        self._mode = NO_BODY
        self._send(h1write.head(response.status, response.headers, mode=NO_BODY, length=None,
                                keep_alive=False, version="1.1", reason=response.reason,
                                upgrade=tun.protocol) + tun.early)
        early = self._take_upgrade_data()
        if early:
            send_all(tun.peer, early)
        tunnel(self.sock, tun.peer, self.ctx.tunnels)

    def _send(self, data, flags: int = 0) -> None:
        """Send all of ``data``; what the client does not take at once waits (``_send_rest``)."""
        sock = self.sock
        if type(sock) is PlainSocket:  # ``send_now`` written out: every response sends here
            try:
                sent = sock._sock.send(data, flags)
            except (BlockingIOError, InterruptedError):
                sent = 0
        else:
            sock.settimeout(self._write_wait())  # a TLS socket's send waits itself
            sent = sock.send(data, flags)
        while sent < len(data):
            if not self._keeps_up():
                self._slowed()
                self._send_rest(memoryview(data)[sent:])
                return
            sent += send_now(sock, memoryview(data)[sent:], flags)

    def _keeps_up(self) -> bool:
        """The client's buffer was full: does it make room within ``STALL_GRACE``?

        A full buffer alone is every bulk transfer's normal state; a client that
        keeps it full for a while is slower than its upstream (or gone): only
        then is it treated as slow. A TLS client gets no grace.
        """
        sock = self.sock
        if type(sock) is not PlainSocket:
            return False
        try:
            wait_write(sock.fileno(), timeout=STALL_GRACE, timeout_exc=_Late)
        except _Late:
            return False
        return True

    def _send_rest(self, view: memoryview) -> None:
        sock = self.sock
        while view:
            sock.settimeout(self._write_wait())  # the client is slow: only now does it matter
            view = view[sock.send(view):]

    def _slowed(self, span_left: int = 0, held: memoryview | bytes = b"") -> bool:
        """The client cannot take what we send now: start its clock, tell the source.

        True when the source reads ahead itself from now on: the ``held`` bytes
        first, then the ``span_left`` bytes of its span the connection had not read.
        """
        if not self._slow:
            self._slow = time.monotonic()
            self._slow_sent = self._sent()
        source = self._source
        if source is None:
            return False
        stalled = getattr(source, "stalled", None)
        if stalled is not None and stalled(span_left, held):
            self._source = None  # the source reads ahead now: once is enough
            return True
        return False

    def _write_wait(self, sending: int = 0) -> float:
        """Seconds the next wait for the client may take: ``timeouts.read``, and less when
        the response falls below ``limits.min_rate`` since the client first fell behind."""
        ctx = self.ctx
        read = ctx.timeouts.read
        rate = ctx.limits.min_rate
        if not rate or not self._slow:
            return read
        sent = self._sent() + sending - self._slow_sent
        allowed = self._slow + read + sent / rate - time.monotonic()
        if allowed <= 0:
            raise TimeoutError("client reading slower than limits.min_rate")
        return min(read, allowed)

    def _file_wait(self, sent: int) -> float:
        """The sendfile pump's wait for the client (``sent``: bytes of this region so far)."""
        if not self._slow:
            self._slow = time.monotonic()
            self._slow_sent = self._sent() + sent
        return self._write_wait(sent)

    def _sent(self) -> int:
        outcome = self.outcome
        return outcome.sent if outcome is not None else 0  # None: a page for a broken request

    def _log_body(self, message: str) -> None:
        req = self.request
        self.log_error(f"{message} ({req.method} {printable(req.raw_path)}, "
                       f"{self.outcome.upstream})")

    # -- closing ------------------------------------------------------------------
