"""The HTTP/1.1 client connection: read requests, dispatch each, answer it.

Socket code, one greenlet per connection. ``ClientConn`` is the HTTP/1.1
implementation of the response seam (``http.message.Stream``): this module is
its request half (parsing, bodies, the keep-alive loop, error pages) and
``h1writer`` its response half (framing, keep-alive, every write). It is the one
place where an ``HTTPError`` becomes an error page. Timeouts (SPEC §5):
``header`` for a whole request head (slowloris) and for the first request of a
connection, ``idle`` between keep-alive requests, ``read`` for each body read
and each write to a slow client (a client that stops reading is cut after it),
and ``limits.min_rate`` for a body or a response that trickles.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Iterator

from ..http import deadline, h1fast, h1write, pages
from ..http.h1read import BODY, END, FAIL, HEAD, UPGRADE, RequestReader
from ..http.message import Header, Outcome
from ..http.request import Abort, HTTPError, Request, is_websocket, printable
from ..http.wire import READ_SIZE
from .h1writer import H1Writer
from .park import PARK_AFTER

# After an error with unread request bytes, read (and drop) them this long
# before closing: closing with unread data makes the kernel send a RST that can
# destroy our error response before the client reads it (nginx: lingering_close).
LINGER_TIME = 2.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# What one read for a request head brought (``_recv_into_reader``).
_READ, _LATE, _EOF = object(), object(), object()
# What ``_next_request`` returns when the connection parked (``serve.park``).
_PARKED = object()


# What a trusted proxy's X-Request-ID may be to be kept: visible ASCII, not too long
# (it goes into every log line and upstream head).
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,200}")


def forwarded_id(req: Request, ctx) -> bytes | None:
    """A trusted proxy's X-Request-ID, if it is a usable one."""
    if req.client_addr[0] not in ctx.trusted:
        return None
    value = req.header(b"x-request-id")
    return value if value and _REQUEST_ID.fullmatch(value) else None


def _fails_before_end(events) -> bool:
    """Whether the queued events hit FAIL before the END of the current request."""
    for kind, _ in events:
        if kind == END:
            return False
        if kind == FAIL:
            return True
    return False


class ClientConn(H1Writer):
    """One accepted client socket and the requests on it (``Stream`` for each in turn).

    ``ctx`` is what the worker shares with every connection: ``timeouts``,
    ``limits``, ``draining``, ``tunnels``, ``access``/``access_raw``/``log_error``
    and request counters (``serve.runtime.Runtime``). ``listener`` answers each
    request through the stream (``serve.site.Listener.respond``) and names the
    port and scheme the requests came in on.
    """

    # Slots: ten thousand idle connections each hold one of these (no __dict__).
    __slots__ = ("_body_done", "_body_seen", "_expect", "_linger", "_ready", "addr", "idle",
                 "listener", "reader", "served", "trailers")

    def __init__(self, sock, addr, listener, ctx) -> None:
        self.sock = sock
        self.ctx = ctx
        self.listener = listener
        self.addr = addr if isinstance(addr, tuple) else ("", 0)
        # Made when bytes arrive and dropped between requests: an idle keep-alive
        # connection then holds no parser (~3 KB less each; SPEC §5, 10k idle).
        self.reader: RequestReader | None = None
        self._ready: Request | None = None  # a whole head the fast lane read without a reader
        self.keep_alive = True
        self.served = 0  # requests answered on this connection
        self.idle = True  # waiting for a request: a draining worker may close it
        self._linger = False
        self._body_done = True
        self._body_seen = 0
        self._expect = False
        self.trailers: list[Header] = []
        self._init_response()

    # -- the connection loop ----------------------------------------------------
    def serve(self) -> None:
        self.ctx.open_connections += 1
        self._serve(None)

    def resume(self, idle_left: float) -> None:
        """Go on with a keep-alive wait that parked (``serve.park``), ``idle_left`` to run."""
        self._serve(idle_left)

    def _serve(self, idle_left: float | None) -> None:
        ctx = self.ctx
        parked = False
        try:
            # A resumed connection reads first: a drain may have turned keep_alive off
            # while it was parked, and its next request is still answered (with close).
            while idle_left is not None or (self.keep_alive and not ctx.draining):
                req = self._next_request(idle_left)
                idle_left = None
                if req is None:
                    break
                if req is _PARKED:
                    parked = True  # the lot owns the connection now
                    return
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
            if not parked:
                self.abandon()

    def abandon(self) -> None:
        """The connection's end: uncounted, unlisted, closed."""
        ctx = self.ctx
        ctx.open_connections -= 1
        ctx.connections.discard(self)
        self._close()

    def _handle(self, req: Request) -> None:
        started = time.monotonic()
        self.request = req
        self._mode = ""  # no head committed yet
        outcome = self.outcome = Outcome()
        ctx = self.ctx
        # The request id: a per-worker prefix and a counter, formatted without a call;
        # a trusted proxy's own X-Request-ID is kept (``forwarded_id``).
        ctx.serial += 1
        req.request_id = ((ctx.trust_ids and forwarded_id(req, ctx))
                          or b"%s%x" % (ctx.id_prefix, ctx.serial))
        self._body_seen = 0
        self._expect = False
        self.trailers = []
        try:
            if req.chunked or req.content_length:  # ``has_body``; a property read is a call
                self._start_body(req)
            else:
                self._body_done = True
                # A bodyless request's END came in the same feed as its head (with no
                # reader, the fast lane read the head alone).
                reader = self.reader
                if reader is not None and reader.events and reader.events[0][0] == END:
                    reader.events.popleft()
            if req.upgrade:
                self._check_upgrade(req)
            if not req.keep_alive or self.ctx.drain_began:
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
            # An idle connection keeps nothing of its last request (``_handle`` and
            # ``start`` set the rest anew).
            self.request = self.outcome = None
            self.filters = ()
            self.error_pages = None

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
        # The page goes through the filters and error pages of the scope that raised
        # (header rules and CORS fields apply to error pages too).
        self.respond(pages.response(exc.status))

    # -- reading requests -------------------------------------------------------
    def _next_request(self, idle_left: float | None = None) -> Request | object | None:
        """The next request, None when the connection ends, or ``_PARKED``.

        ``idle_left``: a resumed keep-alive wait, with that much of it to run."""
        timeouts = self.ctx.timeouts
        deadline = None
        while True:
            req = self._ready
            if req is not None:
                self._ready = None
                return req
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
            got = None
            if in_head or not self.served:
                # A connection is opened to send a request: its first one, and any
                # head already begun, must arrive within ``header`` (slowloris).
                if deadline is None:
                    deadline = time.monotonic() + timeouts.header
                timeout = deadline - time.monotonic()
            else:
                timeout = timeouts.idle if idle_left is None else idle_left
                idle_left = None
                # Between requests nothing parsed is pending: let the parser go
                # (the locals too, or they keep it alive through the wait).
                if self.reader is not None:
                    self._drop_reader()
                reader = events = None
                if timeout > PARK_AFTER and self.ctx.lot is not None:
                    # A wait longer than that gives up the greenlet (``serve.park``).
                    got = self._recv_into_reader(PARK_AFTER)
                    if got is _LATE:
                        timeout -= PARK_AFTER
                        if self._park(timeout):
                            return _PARKED
                        got = None
            if got is None:
                got = self._recv_into_reader(timeout) if timeout > 0 else _LATE
            if got is not _READ:
                if in_head:
                    # A head begun and not finished: answered, so the client (whose
                    # write side may be all that closed) and the log both learn why.
                    self._error_without_request(
                        HTTPError("request head took too long", 408) if got is _LATE
                        else HTTPError("client closed in the middle of a request head", 400))
                return None
            reader = self.reader
            if deadline is None and reader is not None and reader.in_head:
                deadline = time.monotonic() + timeouts.header

    def _recv_into_reader(self, timeout: float) -> object:
        """One read fed to the parser (errors come as FAIL events): ``_READ``, or
        ``_LATE`` when nothing came in ``timeout``, ``_EOF`` when the client closed."""
        sock = self.sock
        if sock.timeout is not None:  # a slot: reading it is no call, setting it is
            sock.settimeout(None)  # the wait every request makes: a cheap deadline instead
        try:
            data = deadline.call(timeout, sock.recv, READ_SIZE)
        except TimeoutError:
            return _LATE
        if not data:
            return _EOF
        reader = self.reader
        if reader is None:
            listener = self.listener
            if data[-4:] == b"\r\n\r\n":
                # One whole head is the common read between requests: a plain one
                # needs no reader at all (``h1fast``); pipelined bytes go below.
                req, end = h1fast.take(data, self.ctx.fast_bounds, self.addr[:2],
                                       listener.port, listener.scheme)
                if end == len(data):
                    self._ready = req
                    return _READ
            limits = self.ctx.limits
            reader = self.reader = RequestReader(
                limits.header_bytes, self.addr[:2], listener.port, listener.scheme,
                line_limit=limits.request_line_bytes, field_count=limits.header_fields,
                field_limit=limits.field_bytes)
        reader.feed(data)
        return _READ

    def _park(self, left: float) -> bool:
        pending = getattr(self.sock, "pending", None)  # TLS: bytes decrypted, not yet read
        if pending is not None and pending():
            return False  # readable already, though the socket's watcher cannot tell
        return self.ctx.lot.park(self, left)

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
        """A request with a body (``_handle`` sets up a bodyless one): its checks."""
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


