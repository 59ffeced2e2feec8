"""One HTTP/2 stream: the second implementation of the response seam (``http.message.Stream``).

Socket code, run in the stream's own greenlet. The request came whole in a
HEADERS frame (``http.h2head`` made it a ``Request``); its body arrives as
DATA the connection's reader queues here, and is taken by the responder
(``body``), which is when its flow-control window is given back: an upload
never has more than the stream's window in memory. A response goes out as
HEADERS, DATA and maybe trailing HEADERS, each DATA no larger than the
client's window allows: waiting for window is this protocol's slow client,
bounded by ``timeouts.read`` (then the stream is reset), and a body source
that can read ahead (a proxied response: ``stalled``) is told when it
happens. A failure after the head went out resets the stream, where
HTTP/1.1 would close the connection.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import gevent
from gevent.event import Event
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError

from ..http import deadline, errorpages, filters, h1write, h2head, pages
from ..http.message import FileRegion, Header, Outcome, Response, SocketSpan, Tunnel
from ..http.request import Abort, HTTPError, Request, printable
from .conn import forwarded_id
from .h1writer import STALL_GRACE


class Owner(Protocol):
    """What a stream needs of its connection (``h2conn.H2Conn``, which imports this module)."""

    h2: H2Connection
    ctx: Any
    listener: Any
    addr: tuple
    closed: bool
    queued: int

    def flush(self) -> None: ...

    def finished(self, stream: H2Stream) -> None: ...

    def local_address(self) -> str: ...

    def log_error(self, message: str) -> None: ...


# The largest DATA burst one stream queues before the others get a turn.
BURST = 65536


class StreamGone(ConnectionResetError):
    """The client reset this stream, or the connection ended: nobody reads the answer."""


class _NoWindow(Exception):
    """The client left the window shut past ``timeouts.read``."""


class H2Stream:
    """One request on an HTTP/2 connection and its answer (see the module docstring)."""

    def __init__(self, conn: Owner, sid: int, request: Request | None,
                 error: HTTPError | None) -> None:
        self.conn = conn
        self.sid = sid
        self.ctx = conn.ctx
        self.request = request
        self.error = error  # a head refused with a 4xx (not malformed): its page answers
        self.outcome = Outcome()
        self.filters = ()
        self.error_pages = None
        self.trailers: list[Header] = []
        self.greenlet: gevent.Greenlet | None = None
        self.answered = False  # the response is complete (or the stream was reset by us)
        self.gone = False  # reset by the client, or the connection ended
        self._head: list[Header] | None = None  # a response head not sent yet
        self._started = False  # ``start`` ran: a page can no longer replace the response
        self._no_body = False  # HEAD, 1xx, 204, 304
        self._left: int | None = None  # body bytes a content-length still allows
        self._chain = None
        self._source = None  # a streamed body that reads ahead when the client stalls
        # Made when first waited on: most streams never wait (an Event costs more than
        # the rest of a stream's state).
        self._window: Event | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._arrival: Event | None = None
        self._ended = False  # END_STREAM came: the request body is all here
        self._body_done = request is None or not request.has_body
        self._received = 0
        self._expect = False

    # -- the stream's greenlet -------------------------------------------------------
    def run(self) -> None:
        started = time.monotonic()
        ctx = self.ctx
        req = self.request
        outcome = self.outcome
        try:
            if req is None:
                raise self.error
            ctx.serial += 1
            # As on HTTP/1.1: a trusted proxy's own X-Request-ID is kept.
            req.request_id = ((ctx.trust_ids and forwarded_id(req, ctx))
                              or b"%s%x" % (ctx.id_prefix, ctx.serial))
            if req.content_length is not None and req.content_length > ctx.limits.body_bytes:
                raise HTTPError(f"body of {req.content_length} bytes over the limit", 413)
            expect = req.header(b"expect")
            if expect is not None and not self._body_done:
                if expect.strip().lower() != b"100-continue":
                    raise HTTPError("unsupported Expect", 417)
                self._expect = True
            self.conn.listener.respond(self)
        except HTTPError as exc:
            self._error(exc)
        except (Abort, _NoWindow):
            self._reset(ErrorCodes.INTERNAL_ERROR if not self.gone else None)
        except OSError:
            outcome.status = outcome.status or 499
        except gevent.GreenletExit:
            outcome.status = outcome.status or 499  # reset by the client: stop at once
        except Exception as exc:  # stream boundary: log it, never end the connection
            self.log_error(f"internal error: {type(exc).__name__}: {exc}\n"
                           + traceback.format_exc().rstrip())
            if not self._started:
                self._respond_quietly(pages.response(500))
            self._reset(ErrorCodes.INTERNAL_ERROR)
        finally:
            if not self._body_done and self.answered and not self.gone:
                # Answered without reading the whole body: tell the client to stop
                # sending it (RFC 9113 §8.1), the answer stands.
                self._reset(ErrorCodes.NO_ERROR)
            ctx.requests += 1
            if req is not None:
                ctx.access(req, outcome, time.monotonic() - started)
            else:
                ctx.access_raw(self.conn.addr[0], outcome.status)
            self.conn.finished(self)

    def _error(self, exc: HTTPError) -> None:
        if exc.status >= 500:
            req = self.request
            where = f"{req.method} {printable(req.raw_path)}" if req else "(no request)"
            self.log_error(f"{exc.status} {where}: {exc.reason}")
        if self._started:
            self._reset(ErrorCodes.INTERNAL_ERROR)  # a head went out: the page cannot follow
            return
        self._respond_quietly(pages.response(exc.status))

    def _respond_quietly(self, response: Response) -> None:
        if self.request is None:
            # A head refused before it became a request: its page, as to a GET.
            self.request = Request("GET", b"/", "/", b"", "2.0", [],
                                   client_addr=self.conn.addr[:2])
        try:
            self.respond(response)
        except (OSError, Abort, _NoWindow):
            self.outcome.status = self.outcome.status or 499

    # -- the response ------------------------------------------------------------------
    def respond(self, response: Response) -> None:
        if response.own and response.status >= 400:
            errorpages.replace_own(self.request, response, self.error_pages)
        body = response.body
        kind = type(body)
        if kind is Tunnel:
            # Only an Upgrade request gets one, and HTTP/2 has none (RFC 9113 §8.6).
            raise Abort()
        self.start(response)
        chain = self._chain
        if chain is not None:
            for data in filters.as_bytes(body):
                self._data(chain.feed(data), False)
            self.end(getattr(body, "trailers", ()))
            return
        if kind is bytes or kind is memoryview:
            self._data(body, True)
            return
        if kind is FileRegion:
            self._region(body)
            self.end()
            return
        self._source = body
        try:
            for part in body:
                kind = type(part)
                if kind is bytes or kind is memoryview:
                    self._data(part, False)
                elif kind is FileRegion:
                    self._region(part)
                else:
                    self._span(part)
                if getattr(body, "done", False):
                    break
        finally:
            self._source = None
        self.end(getattr(body, "trailers", ()))

    def respond_ready(self, status: int, head: bytes, body: bytes, length: int) -> None:
        """A static site's ready response, rendered as HTTP/1.1 lines: the same fields.

        Seldom here: the ready path wants ``Request.conditional`` False, which only
        HTTP/1.1's fast lane sets.
        """
        fields = [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:] if line]
        self.respond(Response(status, fields, body, length))

    def start(self, response: Response) -> None:
        """Commit the head of ``response``; it goes out with the first DATA (or the end)."""
        req = self.request
        response.headers += ((b"X-Request-ID", req.request_id),)
        self._chain = filters.start(self.filters, req, response) if self.filters else None
        status = response.status
        self._started = True
        self._no_body = not h1write.has_body(req.method, status)
        self._left = None if self._no_body else response.length
        self.outcome.status = status
        self._head = h2head.response(status, response.headers, response.length)

    def write(self, data: bytes) -> None:
        if self._chain is not None:
            data = self._chain.feed(data)
        self._data(data, False)

    def end(self, trailers: Sequence[Header] = ()) -> None:
        if self._chain is not None:
            tail, self._chain = self._chain.finish(), None
            if tail:
                self._data(tail, False)
        if self._left:
            self._log_body(f"response body {self._left} bytes shorter than its content-length")
            raise Abort()
        fields = h2head.trailer_fields(trailers) if trailers and not self._no_body else ()
        h2c = self.conn.h2
        try:
            if self._head is not None:
                head, self._head = self._head, None
                h2c.send_headers(self.sid, head, end_stream=not fields)
            elif not fields:
                h2c.send_data(self.sid, b"", end_stream=True)
            if fields:
                h2c.send_headers(self.sid, fields, end_stream=True)
        except StreamClosedError:
            raise StreamGone() from None
        self.answered = True
        self.conn.flush()

    def interim(self, status: int, headers: list[Header], reason: bytes = b"") -> None:
        """A 1xx (103 Early Hints) before the head."""
        try:
            self.conn.h2.send_headers(self.sid, h2head.response(status, headers, None))
        except StreamClosedError:
            raise StreamGone() from None
        self.conn.flush()

    def _data(self, data, last: bool) -> None:
        """Body bytes: framed within the client's window; ``last`` ends the stream."""
        if self._no_body:
            data = b""
        size = len(data)
        if self._left is not None:
            if size > self._left:
                self._log_body(f"response body longer than its content-length; "
                               f"{size - self._left} bytes dropped")
                data, size = data[:self._left], self._left
            self._left -= size
        if self._head is not None:
            self._send_head(last and not size)
            if not size:
                if last:
                    self.answered = True
                self.conn.flush()
                return
        elif not size and not last:
            return
        h2c = self.conn.h2
        sid = self.sid
        view = memoryview(data)
        self.outcome.sent += size
        try:
            while True:
                room = self._room(len(view)) if view else 0
                frame = h2c.max_outbound_frame_size
                while room:
                    piece = view[:min(room, frame)]
                    view = view[len(piece):]
                    room -= len(piece)
                    h2c.send_data(sid, piece.tobytes(), end_stream=last and not view)
                    self.conn.queued += len(piece)
                if not view and last and not size:
                    h2c.send_data(sid, b"", end_stream=True)
                self.conn.flush()
                if not view:
                    break
        except StreamClosedError:
            raise StreamGone() from None
        if last:
            self.answered = True

    def _send_head(self, end_stream: bool) -> None:
        head, self._head = self._head, None
        try:
            self.conn.h2.send_headers(self.sid, head, end_stream=end_stream)
        except StreamClosedError:
            raise StreamGone() from None

    def _room(self, wanted: int, span_left: int = 0) -> int:
        """How many bytes may go now (up to ``BURST``), once the client's window allows.

        A source that reads ahead is told once the window has stayed shut for
        ``STALL_GRACE``; 0 means it took over the rest of the span being sent
        (``span_left`` bytes). The whole wait is bounded by ``timeouts.read``.
        """
        h2c = self.conn.h2
        told = self._source is None  # a source that reads ahead hears of it once
        give_up = None
        opened = self._window
        if opened is None:
            opened = self._window = Event()
        while True:
            if self.gone:
                raise StreamGone()
            try:
                window = h2c.local_flow_control_window(self.sid)
            except StreamClosedError:
                raise StreamGone() from None
            if window > 0:
                return min(window, wanted, BURST)
            now = time.monotonic()
            if give_up is None:
                give_up = now + self.ctx.timeouts.read
            opened.clear()
            if not told:
                told = True
                if not opened.wait(STALL_GRACE):
                    stalled = getattr(self._source, "stalled", None)
                    if stalled is not None and stalled(span_left, b"") and span_left:
                        return 0
                continue
            if not opened.wait(max(0.0, give_up - now)) and not self.gone:
                raise _NoWindow()

    def window_opened(self) -> None:
        if self._window is not None:
            self._window.set()

    def _region(self, region: FileRegion) -> None:
        """A file region, read a burst at a time (sendfile cannot go under framing)."""
        count = region.count
        if self._no_body or not count:
            return
        offset, end = region.offset, region.offset + count
        while offset < end:
            data = os.pread(region.fd, min(BURST, end - offset), offset)
            if not data:
                self._log_body(f"file shrank while being sent ({offset - region.offset} "
                               f"of {count} bytes)")
                raise Abort()
            offset += len(data)
            self._data(data, False)  # waits for window before the next read

    def _span(self, span: SocketSpan) -> None:
        """``span.count`` bytes from another socket, read no faster than the client takes them."""
        left = span.count
        recv, timeout = span.sock.recv, span.timeout
        if self._head is not None:
            self._send_head(False)
        while left:
            room = self._room(left, left)
            if not room:
                return  # the source reads the rest ahead and yields it itself
            try:
                data = deadline.call(timeout, recv, room)
            except OSError:
                raise Abort() from None
            if not data:
                raise Abort()  # the peer closed in the middle of the body
            left -= len(data)
            self._data(data, False)

    def _reset(self, code: ErrorCodes | None) -> None:
        self.answered = True
        if code is None or self.gone or self.conn.closed:
            return
        try:
            self.conn.h2.reset_stream(self.sid, code)
            self.conn.flush()
        except (StreamClosedError, OSError):
            pass

    def _log_body(self, message: str) -> None:
        req = self.request
        self.log_error(f"{message} ({req.method} {printable(req.raw_path)}, "
                       f"{self.outcome.upstream})")

    # -- the request body --------------------------------------------------------------
    def arrived(self, data: bytes, flow: int) -> None:
        """DATA for this stream (the connection's reader calls this)."""
        self._received += len(data)
        req = self.request
        if req is not None and req.content_length is not None \
                and self._received > req.content_length:
            self._malformed("more DATA than content-length")
            return
        self._chunks.append((data, flow))
        if self._arrival is not None:
            self._arrival.set()

    def ended(self) -> None:
        req = self.request
        if req is not None and req.content_length is not None \
                and self._received != req.content_length:
            self._malformed("less DATA than content-length")
            return
        self._ended = True
        if self._arrival is not None:
            self._arrival.set()

    def got_trailers(self, fields: Sequence[Header]) -> None:
        try:
            self.trailers = h2head.trailers(fields)
        except h2head.Malformed as exc:
            self._malformed(exc.reason)

    def _malformed(self, why: str) -> None:
        """A stream error (RFC 9113 §8.1.1): reset, and its responder stops."""
        self.log_error(f"malformed HTTP/2 request: {why}")
        try:
            self.conn.h2.reset_stream(self.sid, ErrorCodes.PROTOCOL_ERROR)
        except StreamClosedError:
            pass
        self.give_back()
        self.reset_by_peer()

    def give_back(self) -> int:
        """Drop the body bytes nobody will read; their window goes back to the connection
        (else streams answered without reading their bodies would shut it for good)."""
        unread = sum(flow for _, flow in self._chunks)
        self._chunks.clear()
        if unread:
            self.conn.h2.acknowledge_received_data(unread, self.sid)
        return unread

    def reset_by_peer(self) -> None:
        """Nobody reads this stream's answer any more: stop its responder."""
        if self.gone:
            return
        self.gone = True
        for event in (self._window, self._arrival):
            if event is not None:
                event.set()
        if self.greenlet is not None and not self.answered:
            self.greenlet.kill(block=False)

    def connection_lost(self) -> None:
        self.reset_by_peer()

    def buffered_body(self) -> list[bytes] | None:
        if self._body_done:
            return []
        if not self._ended:
            return None
        return list(self.body())

    def body(self) -> Iterator[bytes]:
        """The request body as it arrives; each piece taken gives its window back."""
        if self._body_done:
            return
        self.expect_continue()
        limit = self.ctx.limits.body_bytes
        read_timeout = self.ctx.timeouts.read
        conn = self.conn
        seen = 0
        while True:
            chunks = self._chunks
            while chunks:
                data, flow = chunks.popleft()
                seen += len(data)
                if seen > limit:
                    raise HTTPError("request body over the limit", 413)
                if flow:
                    conn.h2.acknowledge_received_data(flow, self.sid)
                    conn.flush()
                yield data
            if self.gone:
                raise StreamGone()
            if self._ended:
                self._body_done = True
                return
            arrival = self._arrival
            if arrival is None:
                arrival = self._arrival = Event()
            arrival.clear()
            if not arrival.wait(read_timeout):
                raise HTTPError("client body timed out", 408)

    def body_pending(self) -> bool:
        return not self._body_done

    def expect_continue(self) -> None:
        if self._expect:
            self._expect = False
            self.interim(100, [])

    def local_address(self) -> str:
        return self.conn.local_address()

    def log_error(self, message: str) -> None:
        self.conn.log_error(message)
