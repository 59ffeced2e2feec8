"""An upstream's response on its way to the client: read as the client takes it, or ahead of it.

Socket code (the upstream side only). ``Relay.head`` reads up to the final
response head; the connection then pulls the body as an iterable of parts:
whatever came with the head, one piece per upstream read, or the rest of a
large body of known length as one ``SocketSpan`` it moves raw. While the
client keeps up, nothing more happens: no greenlet, no copy beyond the relay.

When the client falls behind (the connection calls ``stalled``), the rest of
the response is read ahead by a greenlet of its own into a ``Spool`` (memory,
then an unlinked temp file the connection sends with sendfile), and the
upstream connection goes back to the pool as soon as the response is in:
a slow client then holds a greenlet and a temp file, never an upstream worker
(nginx's ``proxy_buffering``). Server-Sent Events, ``X-Accel-Buffering: no``
and ``buffer_responses: false`` keep the old way: the upstream waits for the
client.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent

from ..config.model import Buffering
from ..http import deadline
from ..http.h1read import BODY, END, HEAD, INFO, Response, ResponseReader
from ..http.message import FileRegion, SocketSpan
from ..http.request import Abort, HTTPError
from ..http.wire import BLOCK_SIZE, QUIET, READ_SIZE, peek
from ..shared.tls import tls_problem
from . import headers
from .spool import RESPONSE, Budget, Spool
from .state import Exchange
from .upstream import ConnectionPool, UpstreamError

if TYPE_CHECKING:
    from ..config.model import Upstream

# What is left of a Content-Length body from this size on is moved raw (a
# ``SocketSpan``, or raw reads when reading ahead): no parser, no events.
PUMP_MIN = 256 * 1024


class Buffers:
    """A worker's buffering settings and the budget its spools share."""

    __slots__ = ("budget", "settings")

    def __init__(self, settings: Buffering) -> None:
        self.settings = settings
        self.budget = Budget(settings.worker_memory)

    def request(self) -> Spool:
        """A spool for a request body (bounded by ``limits.body_bytes`` as it is read)."""
        s = self.settings
        return Spool(self.budget, s.memory, s.temp_dir)

    def response(self) -> Spool:
        """A spool for a response read ahead of its client (bounded by ``max_temp_file``)."""
        s = self.settings
        return Spool(self.budget, s.memory, s.temp_dir, s.max_temp_file, RESPONSE)


class Relay:
    """One attempt's upstream connection and its response, as the connection pulls it.

    ``done``: no more parts are coming (the connection sends what it holds with
    the end of the body); ``trailers`` are set at the end. The upstream
    connection is released exactly once (``release``): back to the pool when
    its response was read whole and cleanly, else closed.
    """

    __slots__ = ("_ahead", "_buffers", "_complete", "_eof", "_first", "_pool", "_raw_left",
                 "_read_any", "_received", "_released", "_span_out", "_spool", "_timeout",
                 "done", "done_at", "ex", "reader", "sock", "trailers", "up")

    def __init__(self, ex: Exchange, pool: ConnectionPool, up: Upstream, sock,
                 reader: ResponseReader, buffers: Buffers | None) -> None:
        self.ex = ex
        self._pool = pool
        self.up = up
        self.sock = sock
        self.reader = reader
        self._released = False
        self.done_at = 0.0  # when the upstream's part was over (the access log's upstream time)
        self._buffers = buffers  # None: buffer_responses is off for this route
        # None: an upload shares the socket, and the socket's own timeout applies.
        self._timeout = None if ex.uploading else ex.target.timeouts.read
        self._read_any = False  # a byte came back on this connection
        self._eof = False  # the upstream closed: its connection cannot be pooled
        self._first = True
        self._received = 0  # body bytes taken from the parser (or handed over raw)
        self._raw_left = 0  # raw body bytes the read-ahead still has to read
        self._span_out = False  # a SocketSpan was handed out: the socket is the connection's
        self._spool: Spool | None = None
        self._ahead: gevent.Greenlet | None = None
        self._complete = False  # the upstream's response is all read (or handed over raw)
        self.done = False  # no more parts for the connection
        self.trailers: list = []

    # -- the head -------------------------------------------------------------------
    def head(self) -> Response:
        """The final response head; before it, nothing has been sent to the client."""
        events = self.reader.events
        stream = self.ex.stream
        while True:
            while events:
                kind, payload = events[0]
                if kind == HEAD:
                    events.popleft()
                    if payload.upgrade and not self.ex.req.upgrade:
                        _fail(self.ex, UpstreamError("101 from upstream without an upgrade "
                                                     "request", sent=True, retry=False))
                    self.reader.final = payload
                    return payload
                events.popleft()
                if kind == INFO and payload.status != 100:
                    # 103 Early Hints and the like; a 100 is not relayed, as Rex has
                    # answered the client's Expect itself.
                    stream.interim(payload.status, headers.interim_fields(payload),
                                   payload.reason)
            self._read()

    def whole(self) -> bytes | None:
        """The body, when the head's read brought all of the response (a small answer):
        taken, and the upstream connection let go at once; else None (pull the relay).

        Not with trailers, which only the relay's ``trailers`` carry on.
        """
        reader = self.reader
        events = reader.events
        if not reader.done or events[-1][1]:  # END is last; its payload: trailers
            return None
        first = events[0]
        if first[0] == END:  # no body (HEAD, 204, 304, an empty one)
            data = b""
        elif events[1][0] == END:  # one piece: what the fast lane makes of a small answer
            data = first[1]
        else:
            data = self._parsed(events)
        events.clear()
        # Nothing is left to pull: the relay is over (``_received`` is not read again).
        self.done = self._complete = True
        self.release(self.reusable())
        return data

    # -- the body, as the client takes it ------------------------------------------------
    def __iter__(self) -> Relay:
        return self

    def __next__(self) -> bytes | FileRegion | SocketSpan:
        if self._spool is not None:
            return self._take()
        if self.done:
            raise StopIteration
        events = self.reader.events
        while True:
            data = self._parsed(events)
            if data:
                self._first = False
                return data
            if self.done:
                raise StopIteration
            if self._first:
                self._first = False
                return b""  # the head goes out now, before any body (SSE, long polls)
            left = self._raw()
            if left:
                # A large body of known length: what is left of it is plain bytes.
                self.done = self._complete = True
                self._received += left
                self._span_out = True
                return SocketSpan(self.sock, left, self._timeout)
            self._read()

    def _parsed(self, events) -> bytes:
        """The body bytes the parser has queued, joined; notes the end and its trailers."""
        pieces = []
        while events:
            kind, payload = events.popleft()
            if kind == BODY:
                pieces.append(payload)
            elif kind == END:
                self.trailers = payload
                self._complete = True
                self.done = self._spool is None  # read ahead: done when the spool is
                break
        if not pieces:
            return b""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._received += len(data)
        return data

    def _raw(self) -> int:
        """Bytes of a Content-Length body left to read, when enough to move them raw."""
        final = self.reader.final
        if final.content_length is None:
            return 0
        left = final.content_length - self._received
        return left if left >= PUMP_MIN else 0

    def reusable(self) -> bool:
        """Once the body was read whole: may the upstream connection be pooled?"""
        ex, reader = self.ex, self.reader
        if not (self._complete and not self._raw_left and reader.final.keep_alive
                and not ex.uploading and ex.upload_error is None):
            return False
        # Ended by the parser: only if the end came in data (not the upstream's
        # close) and nothing followed it. Ended raw (a large body): only if nothing
        # came after it, which one peek tells; an upstream still writing is let go.
        if reader.done:
            return not (self._eof or reader.leftover)
        return peek(self.sock) == QUIET

    # -- the body, ahead of the client -----------------------------------------------------
    def stalled(self, span_left: int = 0, held: memoryview | bytes = b"") -> bool:
        """The client is slower than the upstream: read the rest ahead, if buffering may.

        ``span_left``: bytes of the last ``SocketSpan`` the connection has not read;
        ``held``: bytes of it the connection read but could not send, which come
        first. True when the rest will come from the spool (the connection stops
        its raw pump); False when the connection goes on as it was.
        """
        if self._spool is not None or (self._span_out and not span_left):
            return False  # already reading ahead, or the connection is reading the span
        if not self._may_buffer():
            self._buffers = None  # not for this response: asked again, answer at once
            return False
        if self._complete and not span_left:
            # Everything is in hand already: the upstream connection can go now.
            self.release(self.reusable())
            return False
        final = self.reader.final
        if not span_left and final.content_length is not None \
                and final.content_length - self._received < PUMP_MIN:
            # What is left is less than the socket buffers between us hold: the
            # upstream has written it all already, and waits for nobody.
            return False
        spool = self._buffers.response()
        try:
            spool.open()  # a response read ahead is large: it needs its file
            spool.write(held)
        except OSError as exc:
            # No temp file (no room on disk, no directory): the connection sends
            # what it holds itself, and the upstream waits for the client, as before.
            spool.close()
            self._buffers = None
            self.ex.stream.log_error(f"cannot buffer a response: {exc}")
            return False
        self._raw_left = span_left
        self._span_out = False
        self._complete = not span_left and self._complete
        self.done = False
        self._spool = spool
        self._ahead = gevent.spawn(self._read_ahead)
        return True

    def _may_buffer(self) -> bool:
        if self._buffers is None:
            return False
        for name, value in self.reader.final.headers:
            lname = name.lower()
            if lname == b"content-type" and value.lower().startswith(b"text/event-stream"):
                return False  # every event must reach the client as it comes
            if lname == b"x-accel-buffering" and value.strip().lower() == b"no":
                return False  # the upstream asks for it (nginx's convention)
        return True

    def _read_ahead(self) -> None:
        """The read-ahead greenlet: the rest of the response into the spool, then let go."""
        spool = self._spool
        try:
            if not self._raw_left:
                events = self.reader.events
                while True:
                    spool.write(self._parsed(events))
                    if self._complete:
                        break
                    self._raw_left = self._raw()
                    if self._raw_left:
                        self._received += self._raw_left
                        break
                    spool.wait_room()
                    self._read()
            self._read_raw(spool)
            self._complete = True
            spool.end()
            self.release(self.reusable())
        except (Abort, HTTPError, UpstreamError, OSError) as exc:
            if type(exc) is not Abort and isinstance(exc, OSError):
                # Reads from the upstream fail as Abort: this is the temp file.
                self.ex.stream.log_error(f"cannot buffer a response: {exc}")
            spool.fail(exc)  # the client gets what came, then the cut
            self.release(False)

    def _read_raw(self, spool: Spool) -> None:
        sock, timeout = self.sock, self._timeout
        while self._raw_left:
            spool.wait_room()
            try:
                data = deadline.call(timeout, sock.recv, min(self._raw_left, BLOCK_SIZE))
            except OSError:  # TimeoutError included
                raise Abort() from None
            if not data:
                raise Abort()  # the upstream closed in the middle of the body
            spool.write(data)
            self._raw_left -= len(data)

    def _take(self) -> bytes | FileRegion:
        spool = self._spool
        part = spool.take()
        if part is None:
            self.done = True
            raise StopIteration
        # The last part: the connection sends it with the end of the body.
        self.done = spool.ended and spool.empty
        return part

    # -- the upstream side -------------------------------------------------------------------
    def _read(self) -> None:
        ex = self.ex
        try:
            data = deadline.call(self._timeout, self.sock.recv, READ_SIZE)
        except TimeoutError:
            if ex.body_flowing:
                # The upstream may rightly wait for the whole body: its read timer
                # starts once the body is sent (nginx: proxy_read_timeout). A stalled
                # client is the uploader's to time out (408), not the upstream's fault.
                return
            _fail(ex, UpstreamError("upstream read timed out", 504, sent=True, retry=False))
        except OSError as exc:
            _fail(ex, UpstreamError(f"upstream failed: {tls_problem(exc)}", sent=True,
                                    stale=not self._read_any))
        try:
            if data:
                self._read_any = True
                self.reader.feed(data)
            elif self._read_any or ex.upload_error:
                self._eof = True
                self.reader.feed_eof()
            else:
                _fail(ex, UpstreamError("upstream closed the connection before answering",
                                        sent=True, stale=True))
        except HTTPError as exc:
            _fail(ex, UpstreamError(exc.reason, 502, sent=True))

    def close(self) -> None:
        """Done with this attempt, however it went: the upstream connection goes, once."""
        if self._ahead is not None:
            self._ahead.kill()  # still reading (the client went away): closes below
        if self._spool is not None:
            self._spool.close()
        if not self._released:
            self.release(self.reusable())

    def release(self, reusable: bool) -> None:
        """Pool the upstream connection (``reusable``) or close it; only the first call counts."""
        if self._released:
            return
        self._released = True
        self.done_at = now = time.monotonic()
        reader = self.reader
        # The reader stays with a pooled connection when llhttp is at the next response.
        kept = reusable and reader.reusable()
        if reusable:
            self._pool.put(self.up, self.sock, reader if kept else None, now)
        else:
            self.sock.close()
        if not kept:
            reader.release()


def _fail(ex: Exchange, exc: UpstreamError) -> None:
    """Raise what the failure means for this client at this point of the exchange."""
    if ex.responded:
        raise Abort()
    if ex.upload_error is not None:
        raise ex.upload_error
    raise exc
