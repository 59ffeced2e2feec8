"""The client connection: read requests, pick a responder, write one response each.

Socket code, one greenlet per connection. This is the single place where an
``HTTPError`` becomes an error page and where keep-alive is decided. Timeouts
(SPEC §5): ``header`` for a whole request head (slowloris) and for the first
request of a connection, ``idle`` between keep-alive requests, ``read`` for
each body read and each write to a slow client.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING

from ..http import deadline, pages
from ..http.http1 import BODY, END, FAIL, HEAD, UPGRADE, RequestReader
from ..http.request import HTTPError, Request, printable
from ..http.urlpath import normalize
from ..http.wire import send_all
from ..proxy.exchange import Abort
from ..proxy.headers import is_websocket

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .runtime import Listener, Runtime

READ_SIZE = 65536
# After an error with unread request bytes, read (and drop) them this long
# before closing: closing with unread data makes the kernel send a RST that can
# destroy our error response before the client reads it (nginx: lingering_close).
LINGER_TIME = 2.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _fails_before_end(events) -> bool:
    """Whether the queued events hit FAIL before the END of the current request."""
    for kind, _ in events:
        if kind == END:
            return False
        if kind == FAIL:
            return True
    return False


class ClientConn:
    """One accepted client socket and the requests on it."""

    # Slots: ten thousand idle connections each hold one of these (no __dict__).
    __slots__ = ("_body_done", "_body_seen", "_expect", "_linger", "addr", "idle",
                 "keep_alive", "listener", "reader", "rt", "served", "sock", "trailers")

    def __init__(self, sock, addr, listener: Listener, rt: Runtime) -> None:
        self.sock = sock
        self.rt = rt
        self.listener = listener
        self.addr = addr if isinstance(addr, tuple) else ("", 0)
        # Made when bytes arrive and dropped between requests: an idle keep-alive
        # connection then holds no parser (~3 KB less each; SPEC §5, 10k idle).
        self.reader: RequestReader | None = None
        self.keep_alive = True
        self.trailers: list[tuple[bytes, bytes]] = []
        self.served = 0  # requests answered on this connection
        self.idle = True  # waiting for a request: a draining worker may close it
        self._body_done = True
        self._body_seen = 0
        self._expect = False
        self._linger = False

    # -- the connection loop ----------------------------------------------------
    def serve(self) -> None:
        rt = self.rt
        rt.open_connections += 1
        try:
            while self.keep_alive and not rt.draining:
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
            rt.open_connections -= 1
            self._close()

    def _handle(self, req: Request) -> None:
        started = time.monotonic()
        status, sent = 0, 0
        try:
            status, sent = self._dispatch(req)
        except HTTPError as exc:
            status, sent = self._error(req, exc)
        except Abort:
            # The response had started when the exchange failed: closing is the
            # only way left to tell the client its response is incomplete.
            self.keep_alive = False
            status, sent = req.extra.get("status", 502), req.extra.get("sent", 0)
        except OSError:
            # The client went away (nginx logs these as 499); serve() ends the connection.
            self.keep_alive = False
            status, sent = req.extra.get("status") or 499, req.extra.get("sent", 0)
            raise
        finally:
            if not self._body_done:
                # The responder did not read the whole body: the next bytes are not
                # a request head, so this connection cannot carry another request.
                self.keep_alive = False
                self._linger = True
            self.rt.requests += 1
            self.rt.access(req, status, sent, time.monotonic() - started)

    def _error(self, req: Request, exc: HTTPError) -> tuple[int, int]:
        if exc.status >= 500:
            self.log_error(f"{exc.status} {req.method} {printable(req.raw_path)}: {exc.reason}")
        if exc.close or not self._body_done:
            self.keep_alive = False
            self._linger = True
        body = pages.page(exc.status)
        self.send(pages.response(exc.status, body, keep_alive=self.keep_alive and req.keep_alive,
                                 head_only=req.method == "HEAD", version=req.version))
        return exc.status, len(body)

    def _dispatch(self, req: Request) -> tuple[int, int]:
        req.path = normalize(req.raw_path)
        if req.upgrade:
            if req.has_body:
                # llhttp hands everything after an upgrade head to the tunnel, so
                # a body here has no framing we could honour.
                raise HTTPError("upgrade request with a body", 400)
            # Only WebSocket is tunnelled; h2c and the like are served as plain
            # HTTP/1.1 and the connection closes after, as llhttp stopped parsing.
            req.upgrade = is_websocket(req)
        if not req.keep_alive:
            self.keep_alive = False
        self._start_body(req)
        return self.listener.respond(self, req)

    # -- reading requests -------------------------------------------------------
    def _next_request(self) -> Request | None:
        timeouts = self.rt.timeouts
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
            reader = self.reader = RequestReader(self.rt.limits.header_bytes, self.addr[:2],
                                                 listener.port, listener.scheme)
        reader.feed(data)
        return True

    def _error_without_request(self, exc: HTTPError) -> None:
        """A request we could not even parse: answer and close (h11's one place)."""
        self.keep_alive = False
        self._linger = True
        if self.reader is not None:
            self.reader.in_head = False  # answered: nothing more to time out
        self.rt.access_raw(self.addr[0], exc.status)
        try:
            self.send(pages.response(exc.status))
        except OSError:
            pass  # the client is gone; the error was for it alone

    # -- request bodies ----------------------------------------------------------
    def _start_body(self, req: Request) -> None:
        limit = self.rt.limits.body_bytes
        self.trailers = []
        self._body_seen = 0
        self._expect = False
        if not req.has_body:
            # A bodyless request's END came in the same feed as its head.
            events = self.reader.events
            if events and events[0][0] == END:
                events.popleft()
            self._body_done = True
            return
        self._body_done = False
        if req.content_length is not None and req.content_length > limit:
            raise HTTPError(f"body of {req.content_length} bytes over the limit", 413)
        expect = req.header(b"expect")
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                raise HTTPError("unsupported Expect", 417)
            # RFC 9110 §10.1.1: HTTP/1.0 clients never wait for a 100.
            self._expect = req.version == "1.1"

    def buffered_body(self) -> list[bytes] | None:
        """The whole request body when it has already arrived (small bodies), else None.

        Consumes it like ``body_pieces`` would. Lets the proxy send head and body
        in one write, and replay them on a fresh upstream connection.
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

    def body_pieces(self) -> Iterator[bytes]:
        """Yield the request body as it arrives (de-chunked); the proxy pulls it."""
        if self._body_done:
            return
        self.expect_continue()
        events = self.reader.events
        read_timeout = self.rt.timeouts.read
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
            self.sock.settimeout(read_timeout)
            try:
                data = self.sock.recv(READ_SIZE)
            except TimeoutError:
                raise HTTPError("client body timed out", 408) from None
            if not data:
                raise HTTPError("client closed during the body", 400)
            self.reader.feed(data)

    def expect_continue(self) -> None:
        """Send the 100 (Continue) the client waits for, once (RFC 9110 §10.1.1)."""
        if self._expect:
            self._expect = False
            self.send(_CONTINUE)

    def _count(self, size: int) -> None:
        self._body_seen += size
        if self._body_seen > self.rt.limits.body_bytes:
            raise HTTPError("request body over the limit", 413)

    def take_upgrade_data(self) -> bytes:
        """Bytes the client sent after its Upgrade request (tunnel start)."""
        events = self.reader.events
        data = b""
        while events:
            kind, payload = events.popleft()
            if kind == UPGRADE:
                data += payload
        return data

    def body_pending(self) -> bool:
        return not self._body_done

    # -- writing ------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.rt.timeouts.read)
        send_all(self.sock, data)

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

    def log_error(self, message: str) -> None:
        self.rt.log_error(f"{self.addr[0]}: {message}")
