"""The HTTP/1.1 client connection: read requests, dispatch each, frame and write its response.

Socket code, one greenlet per connection. ``ClientConn`` is the HTTP/1.1
implementation of the response seam (``http.message.Stream``): responders hand
it a ``Response`` and it alone decides the framing, keep-alive (draining
included), HEAD and 204/304 suppression, and sends, with the write timeout on
every write, sendfile and raw pump. It is the one place where an ``HTTPError``
becomes an error page. Timeouts (SPEC §5): ``header`` for a whole request head
(slowloris) and for the first request of a connection, ``idle`` between
keep-alive requests, ``read`` for each body read and each write to a slow
client (a client that stops reading is cut after it).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Sequence

from rex_static.sendfile import more_flag, send_file

from ..http import deadline, filters, h1write, pages
from ..http.filters import Chain
from ..http.h1read import BODY, END, FAIL, HEAD, UPGRADE, RequestReader
from ..http.h1write import CHUNKED, LENGTH, NO_BODY
from ..http.message import (
    FileRegion,
    Filter,
    Header,
    Outcome,
    Response,
    SocketSpan,
    Tunnel,
)
from ..http.request import Abort, HTTPError, Request, is_websocket, printable
from ..http.wire import BLOCK_SIZE, READ_SIZE, send_all, send_now
from .tunnel import tunnel

# After an error with unread request bytes, read (and drop) them this long
# before closing: closing with unread data makes the kernel send a RST that can
# destroy our error response before the client reads it (nginx: lingering_close).
LINGER_TIME = 2.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF = b"\r\n"


def _fails_before_end(events) -> bool:
    """Whether the queued events hit FAIL before the END of the current request."""
    for kind, _ in events:
        if kind == END:
            return False
        if kind == FAIL:
            return True
    return False


class ClientConn:
    """One accepted client socket and the requests on it (``Stream`` for each in turn).

    ``ctx`` is what the worker shares with every connection: ``timeouts``,
    ``limits``, ``draining``, ``tunnels``, ``access``/``access_raw``/``log_error``
    and request counters (``serve.runtime.Runtime``). ``listener`` answers each
    request through the stream (``serve.site.Listener.respond``) and names the
    port and scheme the requests came in on.
    """

    # Slots: ten thousand idle connections each hold one of these (no __dict__).
    __slots__ = ("_body_done", "_body_seen", "_chain", "_expect", "_left", "_linger", "_mode",
                 "_pending", "_slow", "_slow_sent", "_source", "addr", "ctx", "filters", "idle",
                 "keep_alive", "listener", "outcome", "reader", "request", "served", "sock",
                 "trailers")

    def __init__(self, sock, addr, listener, ctx) -> None:
        self.sock = sock
        self.ctx = ctx
        self.listener = listener
        self.addr = addr if isinstance(addr, tuple) else ("", 0)
        # Made when bytes arrive and dropped between requests: an idle keep-alive
        # connection then holds no parser (~3 KB less each; SPEC §5, 10k idle).
        self.reader: RequestReader | None = None
        self.keep_alive = True
        self.served = 0  # requests answered on this connection
        self.idle = True  # waiting for a request: a draining worker may close it
        self._linger = False
        self._clear()

    def _clear(self) -> None:
        """Forget the last request: an idle connection keeps nothing of it."""
        self.request: Request | None = None
        self.outcome: Outcome | None = None
        self.filters: Sequence[Filter] = ()
        self.trailers: list[Header] = []
        self._body_done = True
        self._body_seen = 0
        self._expect = False
        self._mode = ""  # "" until a response head was committed
        self._pending = b""  # response bytes not sent yet (the head waits for the body)
        self._left = 0  # body bytes a Content-Length still allows
        self._chain: Chain | None = None
        self._source = None  # the streamed body being sent: told when the client stalls
        self._slow = 0.0  # when this response first had to wait for the client
        self._slow_sent = 0  # body bytes sent by then

    # -- the connection loop ----------------------------------------------------
    def serve(self) -> None:
        ctx = self.ctx
        ctx.open_connections += 1
        try:
            while self.keep_alive and not ctx.draining:
                req = self._next_request()
                if req is None:
                    break
                self.idle = False
                self._handle(req)
                req = None  # not kept through the keep-alive wait
                self.served += 1
                self.idle = True
        except OSError:
            pass  # the client went away or timed out writing: nothing left to tell it
        except Exception as exc:  # connection boundary: log it, never crash the worker
            self.log_error(f"internal error: {type(exc).__name__}: {exc}\n"
                           + traceback.format_exc().rstrip())
        finally:
            ctx.open_connections -= 1
            self._close()

    def _handle(self, req: Request) -> None:
        started = time.monotonic()
        self.request = req
        outcome = self.outcome = Outcome()
        try:
            self._start_body(req)
            if req.upgrade:
                self._check_upgrade(req)
            if not req.keep_alive:
                self.keep_alive = False
            self.listener.respond(self)
        except HTTPError as exc:
            self._error(req, exc)
        except Abort:
            # The response had started when it failed: closing is the only way
            # left to tell the client its response is incomplete.
            self.keep_alive = False
        except OSError:
            # The client went away (nginx logs these as 499); serve() ends the connection.
            self.keep_alive = False
            outcome.status = outcome.status or 499
            raise
        finally:
            if not self._body_done:
                # The responder did not read the whole body: the next bytes are not
                # a request head, so this connection cannot carry another request.
                self.keep_alive = False
                self._linger = True
            ctx = self.ctx
            ctx.requests += 1
            ctx.access(req, outcome, time.monotonic() - started)
            self._clear()

    def _check_upgrade(self, req: Request) -> None:
        if req.has_body:
            # llhttp hands everything after an upgrade head to the tunnel, so
            # a body here has no framing we could honour.
            raise HTTPError("upgrade request with a body", 400)
        # Only WebSocket is tunnelled; h2c and the like are served as plain
        # HTTP/1.1 and the connection closes after, as llhttp stopped parsing.
        req.upgrade = is_websocket(req)

    def _error(self, req: Request, exc: HTTPError) -> None:
        """The one place an HTTPError becomes a page (h11's idea)."""
        if exc.status >= 500:
            self.log_error(f"{exc.status} {req.method} {printable(req.raw_path)}: {exc.reason}")
        if exc.close or not self._body_done:
            self.keep_alive = False
            self._linger = True
        if self._mode:
            # A head has gone out already (a WSGI app failed reading its body after
            # starting its response): the page cannot follow it; cut instead.
            self.keep_alive = False
            return
        self.filters = ()  # an error page is Rex's own: nothing of the route applies
        self.respond(pages.response(exc.status))

    # -- reading requests -------------------------------------------------------
    def _next_request(self) -> Request | None:
        timeouts = self.ctx.timeouts
        deadline = None
        while True:
            reader = self.reader
            in_head = False
            if reader is not None:
                events = reader.events
                while events:
                    kind, payload = events.popleft()
                    if kind == HEAD:
                        if reader.failed and _fails_before_end(events):
                            # Its own head or body is broken and was all in one read:
                            # refuse it before any of it reaches an upstream.
                            self._error_without_request(events[-1][1])
                            return None
                        return payload
                    if kind == FAIL:
                        self._error_without_request(payload)
                        return None
                    if kind == UPGRADE:
                        # Data after a non-tunnelled upgrade request: not ours to parse.
                        self.keep_alive = False
                        return None
                in_head = reader.in_head
            if in_head or not self.served:
                # A connection is opened to send a request: its first one, and any
                # head already begun, must arrive within ``header`` (slowloris).
                if deadline is None:
                    deadline = time.monotonic() + timeouts.header
                timeout = deadline - time.monotonic()
            else:
                timeout = timeouts.idle
                # Between requests nothing parsed is pending: let the parser go
                # (the locals too, or they keep it alive through the wait).
                self._drop_reader()
                reader = events = None
            if timeout <= 0 or not self._recv_into_reader(timeout):
                if in_head:
                    self._error_without_request(HTTPError("request head took too long", 408))
                return None
            if deadline is None and self.reader.in_head:
                deadline = time.monotonic() + timeouts.header

    def _recv_into_reader(self, timeout: float) -> bool:
        """One read fed to the parser (errors come as FAIL events); False on timeout or EOF."""
        sock = self.sock
        sock.settimeout(None)  # the wait every request makes: a cheap deadline instead
        try:
            data = deadline.call(timeout, sock.recv, READ_SIZE)
        except TimeoutError:
            return False
        if not data:
            return False
        reader = self.reader
        if reader is None:
            listener = self.listener
            reader = self.reader = RequestReader(self.ctx.limits.header_bytes, self.addr[:2],
                                                 listener.port, listener.scheme)
        reader.feed(data)
        return True

    def _error_without_request(self, exc: HTTPError) -> None:
        """A request we could not even parse: answer and close."""
        self.keep_alive = False
        self._linger = True
        if self.reader is not None:
            self.reader.in_head = False  # answered: nothing more to time out
        self.ctx.access_raw(self.addr[0], exc.status)
        resp = pages.response(exc.status)
        try:
            self._send(h1write.head(resp.status, resp.headers, mode=h1write.LENGTH,
                                    length=resp.length, keep_alive=False, version="1.1")
                       + resp.body)
        except OSError:
            pass  # the client is gone; the error was for it alone

    # -- request bodies (the Stream's request side) ---------------------------------
    def _start_body(self, req: Request) -> None:
        if not req.has_body:
            # A bodyless request's END came in the same feed as its head.
            events = self.reader.events
            if events and events[0][0] == END:
                events.popleft()
            return
        self._body_done = False
        if req.content_length is not None and req.content_length > self.ctx.limits.body_bytes:
            raise HTTPError(f"body of {req.content_length} bytes over the limit", 413)
        expect = req.header(b"expect")
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                raise HTTPError("unsupported Expect", 417)
            # RFC 9110 §10.1.1: HTTP/1.0 clients never wait for a 100.
            self._expect = req.version == "1.1"

    def buffered_body(self) -> list[bytes] | None:
        """The whole request body when it has already arrived (small bodies), else None.

        Consumes it like ``body`` would. Lets the proxy send head and body in
        one write, and replay them on a fresh upstream connection.
        """
        if self._body_done:
            return []
        events = self.reader.events
        pieces = []
        size = 0
        for kind, payload in events:
            if kind == BODY:
                pieces.append(payload)
                size += len(payload)
            elif kind == END:
                break
            else:
                return None
        else:
            return None
        self._count(size)
        for _ in range(len(pieces) + 1):
            kind, payload = events.popleft()
        self.trailers = payload
        self._body_done = True
        self._expect = False
        return pieces

    def body(self) -> Iterator[bytes]:
        """Yield the request body as it arrives (de-chunked); the responder pulls it.

        Each read waits at most ``timeouts.read``, and the body must keep up an
        average of ``limits.min_rate`` bytes/s after that much time (408 else).
        """
        if self._body_done:
            return
        self.expect_continue()
        events = self.reader.events
        sock = self.sock
        read_timeout = self.ctx.timeouts.read
        rate = self.ctx.limits.min_rate
        started = time.monotonic()
        sock.settimeout(None)  # each read gets its deadline below
        while True:
            while events:
                kind, payload = events.popleft()
                if kind == BODY:
                    self._count(len(payload))
                    yield payload
                elif kind == FAIL:  # the body's framing is broken
                    raise payload
                else:  # END: the only other event before the next request's head
                    self.trailers = payload
                    self._body_done = True
                    return
            timeout = read_timeout
            if rate:
                allowed = started + read_timeout + self._body_seen / rate - time.monotonic()
                if allowed <= 0:
                    raise HTTPError("client body slower than limits.min_rate", 408)
                timeout = min(timeout, allowed)
            try:
                data = deadline.call(timeout, sock.recv, READ_SIZE)
            except TimeoutError:
                raise HTTPError("client body timed out", 408) from None
            if not data:
                raise HTTPError("client closed during the body", 400)
            self.reader.feed(data)

    def expect_continue(self) -> None:
        """Send the 100 (Continue) the client waits for, once (RFC 9110 §10.1.1)."""
        if self._expect:
            self._expect = False
            self._send(_CONTINUE)

    def body_pending(self) -> bool:
        return not self._body_done

    def _count(self, size: int) -> None:
        self._body_seen += size
        if self._body_seen > self.ctx.limits.body_bytes:
            raise HTTPError("request body over the limit", 413)

    def _take_upgrade_data(self) -> bytes:
        """Bytes the client sent after its Upgrade request (tunnel start)."""
        events = self.reader.events
        data = b""
        while events:
            kind, payload = events.popleft()
            if kind == UPGRADE:
                data += payload
        return data

    # -- responses (the Stream's response side) -------------------------------------
    def start(self, response: Response) -> None:
        """Commit the head of ``response``; it goes out with the first body bytes."""
        req = self.request
        if self.filters:
            self._chain = filters.start(self.filters, req, response)
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
        body = response.body
        kind = type(body)
        if kind is Tunnel:
            self._tunnel(response, body)
            return
        self.start(response)
        if self._chain is not None:
            for data in filters.as_bytes(body):
                self.write(data)
        elif kind is bytes or kind is memoryview:
            self._put(body, False)  # goes out with the head, in one send
        elif kind is FileRegion:
            self._send_region(body)
        else:
            self._stream(body)
            self.end(getattr(body, "trailers", ()))
            return
        self.end()

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

    def interim(self, status: int, headers: list[Header], reason: bytes = b"") -> None:
        """A 1xx before the response (e.g. 103 Early Hints); never to HTTP/1.0 clients."""
        if self.request.version == "1.1":
            self._send(h1write.interim(status, headers, reason))

    def _put(self, data, flush: bool) -> None:
        """Frame ``data`` after what is held; send it all now when ``flush``."""
        mode = self._mode
        if data and mode != NO_BODY:  # HEAD, 204, 304: the head is all there is to send
            if mode == LENGTH and len(data) > self._left:
                # Extra bytes would be read as the next response (RFC 9112 §6.3).
                self._log_body(f"response body longer than its Content-Length; "
                               f"{len(data) - self._left} bytes dropped")
                data = data[:self._left]
            self._left -= len(data)
            self.outcome.sent += len(data)
            if mode == CHUNKED and data:
                data = b"%x\r\n%b\r\n" % (len(data), data)
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
            if sent < n:
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
        sent = send_now(self.sock, data, flags)
        if sent < len(data):
            self._slowed()
            self._send_rest(memoryview(data)[sent:])

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
    def _drop_reader(self) -> None:
        if self.reader is not None:
            self.reader.release()  # no cycle left for the garbage collector
            self.reader = None

    def _close(self) -> None:
        self._drop_reader()
        sock = self.sock
        if self._linger:
            try:
                sock.shutdown(1)  # SHUT_WR: our response is complete, send FIN
                deadline = time.monotonic() + LINGER_TIME
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    if not sock.recv(READ_SIZE):
                        break
            except OSError:
                pass  # the client closed or timed out: lingering is over either way
        sock.close()

    def local_address(self) -> str:
        """The address the request arrived on (SERVER_NAME for a request without Host)."""
        try:
            return str(self.sock.getsockname()[0])
        except (OSError, IndexError, TypeError):
            return "localhost"  # not an IP socket (tests); any name will do

    def log_error(self, message: str) -> None:
        self.ctx.log_error(f"{self.addr[0]}: {message}")


