"""An HTTP/2 client connection (RFC 9113): frames in, one greenlet per stream, frames out.

Socket code. The frame and HPACK state machine is the ``h2`` package's; the
I/O, flow-control policy, scheduling and protections are Rex's. The
connection's own greenlet reads: it feeds bytes to h2 and turns its events
into ``H2Stream``s (``h2stream``), each answered in a greenlet of its own
through the same ``Listener.respond`` as an HTTP/1.1 request. Every write goes
through ``flush``: whoever holds the write lock sends all the frames h2 has
queued, so frames leave in the order h2 made them.

Protections (docs/http2.md, beside nginx's): at most ``MAX_STREAMS`` open
streams (more are refused); header lists bounded by ``limits.header_bytes``
(SETTINGS_MAX_HEADER_LIST_SIZE) and HPACK's table by ``TABLE_SIZE``; h2's cap
of 64 CONTINUATION frames per header block; streams the client resets before
their answer (CVE-2023-44487, "rapid reset"), and PING, SETTINGS and PRIORITY
frames, each with a budget (a burst, then a sustained rate, ``_Budget``): past
it the connection ends with GOAWAY (ENHANCE_YOUR_CALM). A connection with no
stream waits ``timeouts.header`` for its first request and ``timeouts.idle``
between them; a stream waits ``timeouts.read`` for flow-control window.
"""

from __future__ import annotations

import time
import traceback

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, SettingsFrame

from ..http import deadline, h2head
from ..http.request import HTTPError
from ..http.wire import READ_SIZE
from .conn import LINGER_TIME
from .h2stream import H2Stream

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAMS = 128  # SETTINGS_MAX_CONCURRENT_STREAMS (nginx: 128)
TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE: the HPACK table a client may make us keep
STREAM_WINDOW = 65535  # each stream's receive window: what one upload may have in flight
CONNECTION_WINDOW = 1 << 20  # the whole connection's: several uploads at once
# Streams reset by the client before their answer: a burst, then a sustained rate.
EARLY_RESETS, EARLY_RESETS_PER_SECOND = 100, 10
# PING, SETTINGS and PRIORITY frames: a burst, then a sustained rate.
CONTROL_FRAMES, CONTROL_FRAMES_PER_SECOND = 100, 20
FLUSH_AT = 256 * 1024  # queued DATA bytes past which a stream sends them itself

_CONFIG = H2Configuration(
    client_side=False, header_encoding=None,
    # Rex checks headers itself (``http.h2head``): a malformed request is a stream
    # error there, where h2's own checks would end the whole connection.
    validate_inbound_headers=False, normalize_inbound_headers=False,
    # What goes out was made well formed by ``h2head.response``.
    validate_outbound_headers=False, normalize_outbound_headers=False,
)


class _Calm(Exception):
    """The client passed a flood limit: GOAWAY with ENHANCE_YOUR_CALM."""


class _Budget:
    """A token bucket: ``burst`` at once, then ``per_second`` (how a flood is told apart).

    Counted over time rather than per calendar second, so that a flood spread
    thin across second boundaries (a busy machine reads it slowly) is still seen.
    """

    __slots__ = ("burst", "per_second", "tokens", "when")

    def __init__(self, burst: int, per_second: float) -> None:
        self.burst = burst
        self.per_second = per_second
        self.tokens = float(burst)
        self.when = time.monotonic()

    def over(self) -> bool:
        """Spend one; True once the budget is gone."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.when) * self.per_second) - 1
        self.when = now
        return self.tokens < 0


class H2Conn:
    """One HTTP/2 connection: its socket, its h2 state and its open streams.

    Looks enough like ``ClientConn`` for the worker's drain (``idle``,
    ``reader``, ``keep_alive``, ``sock``); ``begin_drain`` sends GOAWAY.
    """

    def __init__(self, sock, addr, listener, ctx) -> None:
        self.sock = sock
        self.addr = addr if isinstance(addr, tuple) else ("", 0)
        self.listener = listener
        self.ctx = ctx
        self.h2 = H2Connection(_CONFIG)
        limits = ctx.limits
        # MAX_CONCURRENT_STREAMS is not among h2's settings: h2 would end the whole
        # connection past it, where RFC 9113 §5.1.2 wants the one stream refused. It
        # goes out in a SETTINGS frame of Rex's own (``_run``) and ``_open`` holds it.
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.header_bytes,
            SettingCodes.HEADER_TABLE_SIZE: TABLE_SIZE,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        self.limits = h2head.H2Limits(limits.header_bytes, limits.header_fields,
                                      limits.field_bytes)
        self.streams: dict[int, H2Stream] = {}
        self.served = 0
        self.quiet_since = 0.0  # when the last stream ended (the idle timeout counts from it)
        self.idle = True  # no stream open: a draining worker may close it
        self.reader = None  # no HTTP/1.1 parser (the drain looks)
        self.keep_alive = True  # set False by a draining worker; GOAWAY says it here
        self.going_away = False
        self.closed = False
        self._writing = Semaphore()
        self._wake = Event()
        self._writer: gevent.Greenlet | None = None  # spawned at the first deferred flush
        self.queued = 0  # DATA bytes queued in h2 since the last send
        self._resets = _Budget(EARLY_RESETS, EARLY_RESETS_PER_SECOND)
        self._control = _Budget(CONTROL_FRAMES, CONTROL_FRAMES_PER_SECOND)

    # -- the connection loop ----------------------------------------------------
    def serve(self) -> None:
        ctx = self.ctx
        ctx.open_connections += 1
        try:
            self._run()
        except OSError:
            pass  # the client went away or a write timed out: nothing left to tell it
        except Exception as exc:  # connection boundary: log it, never crash the worker
            self.log_error(f"internal error (HTTP/2): {type(exc).__name__}: {exc}\n"
                           + traceback.format_exc().rstrip())
        finally:
            ctx.open_connections -= 1
            ctx.connections.discard(self)
            self._close()

    def _run(self) -> None:
        h2c = self.h2
        h2c.initiate_connection()
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        limit = SettingsFrame(0)
        limit.settings = {SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS}
        self.send_now(limit.serialize())
        sock = self.sock
        sock.settimeout(None)  # reads and writes each get a deadline (``deadline.call``)
        timeouts = self.ctx.timeouts
        first_by = time.monotonic() + timeouts.header
        data = b""
        while True:
            if data:
                try:
                    events = h2c.receive_data(data)
                    for event in events:
                        self._event(event)
                except ProtocolError as exc:
                    # h2 queued GOAWAY with the error; the connection is beyond use.
                    self.log_error(f"HTTP/2 protocol error: {exc}")
                    self._end(None)
                    return
                except _Calm as exc:
                    self.log_error(f"HTTP/2 flood: {exc}; closing")
                    self._end(ErrorCodes.ENHANCE_YOUR_CALM)
                    return
                self.flush()
            if self.going_away and not self.streams:
                return
            now = time.monotonic()
            if self.streams:
                # Streams have timeouts of their own; this wait only wakes to see
                # whether they are all done (a stream cannot wake this read).
                wait = timeouts.idle
            elif not self.served:
                wait = first_by - now  # the first request: as HTTP/1.1's
            else:
                wait = self.quiet_since + timeouts.idle - now
            data = b""
            if wait > 0:
                try:
                    data = deadline.call(wait, sock.recv, READ_SIZE)
                except TimeoutError:
                    continue  # the top of the loop decides: still busy, or idle too long
                if not data or self.closed:
                    return  # the client left, or the writer gave up on it (and shut the socket)
                continue
            self._end(ErrorCodes.NO_ERROR)  # idle: tell the client, then close
            return

    def _event(self, event) -> None:
        kind = type(event)
        if kind is DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:
                # A stream already answered or reset: its bytes still used window.
                self._acknowledge(event.flow_controlled_length, event.stream_id)
            else:
                stream.arrived(event.data, event.flow_controlled_length)
        elif kind is RequestReceived:
            self._open(event)
        elif kind is WindowUpdated:
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.window_opened()
            else:
                self._window_opened()
        elif kind is StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended()
        elif kind is StreamReset:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if not stream.answered and self._resets.over():
                    raise _Calm("too many streams reset before their answer")
                stream.reset_by_peer()
        elif kind is TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.got_trailers(event.headers)
        elif kind is RemoteSettingsChanged:
            if self._control.over():
                raise _Calm("too many PING, SETTINGS or PRIORITY frames")
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._window_opened()
        elif kind is PingReceived or kind is PriorityUpdated:
            if self._control.over():
                raise _Calm("too many PING, SETTINGS or PRIORITY frames")
        elif kind is ConnectionTerminated:
            # h2 sends nothing after the client's GOAWAY: streams still open are cut.
            self.going_away = True
            for stream in list(self.streams.values()):
                stream.reset_by_peer()

    def _open(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            # After GOAWAY, or past the limit the client was told (and may not have
            # acknowledged yet): never started, so safe to retry (RFC 9113 §8.7).
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        listener = self.listener
        try:
            req = h2head.request(event.headers, event.stream_ended is not None, self.limits,
                                 self.addr[:2], listener.port, listener.scheme)
        except h2head.Malformed as exc:
            self.log_error(f"malformed HTTP/2 request: {exc.reason}")
            self.ctx.access_raw(self.addr[0], 400)
            self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        except HTTPError as exc:
            req = None
            error = exc
        else:
            error = None
            # Rex checks Content-Length against the DATA itself (a stream error);
            # h2's own check would end the connection.
            h2_stream = self.h2.streams.get(sid)
            if h2_stream is not None:
                h2_stream._expected_content_length = None
        stream = H2Stream(self, sid, req, error)
        self.streams[sid] = stream
        self.idle = False
        stream.greenlet = gevent.spawn(stream.run)

    def finished(self, stream: H2Stream) -> None:
        """A stream's greenlet is done: forget it, give back its unread window."""
        self.streams.pop(stream.sid, None)
        if stream.give_back():
            try:
                self.flush()
            except OSError:
                pass
        self.served += 1
        if not self.streams:
            self.idle = True
            self.quiet_since = time.monotonic()
            if self.going_away:
                # The last stream after GOAWAY: its answer out, then wake the loop,
                # which ends the connection.
                try:
                    self.send_now()
                except OSError:
                    pass
                shutdown_read(self.sock)

    # -- flow control ----------------------------------------------------------
    def _window_opened(self) -> None:
        for stream in self.streams.values():
            stream.window_opened()

    def _acknowledge(self, size: int, sid: int) -> None:
        if size:
            self.h2.acknowledge_received_data(size, sid)

    # -- writing ---------------------------------------------------------------
    def flush(self) -> None:
        """Have every frame h2 has queued sent.

        Frames wait for the connection's writer greenlet, which wakes once the
        greenlets that run now are done: the answers of many streams, and the
        reader's acknowledgements, leave in one send. Past ``FLUSH_AT`` queued
        bytes the caller sends them itself, so a client that reads slowly holds
        its streams back instead of filling memory.
        """
        if self.closed:
            raise ConnectionResetError("HTTP/2 connection closed")
        if self.queued >= FLUSH_AT:
            self.send_now()
            return
        if self._writer is None:
            self._writer = gevent.spawn(self._write_loop)
        self._wake.set()

    def send_now(self, extra: bytes = b"") -> None:
        """Send what h2 has queued (then ``extra``: frames of Rex's own), one sender at a
        time, in h2's order; each send waits at most ``timeouts.read`` for a client
        that does not read.

        A send that fails may have written part of a frame: nothing more can go on
        this connection, so it is shut at once (the reader then ends it).
        """
        with self._writing:
            data = self.h2.data_to_send() + extra
            self.queued = 0
            if data:
                try:
                    deadline.call(self.ctx.timeouts.read, self.sock.sendall, data)
                except OSError:
                    self._broken()
                    raise

    def _broken(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(2)  # wakes the reader, which ends the connection
        except OSError:
            pass

    def _write_loop(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            wake.clear()
            try:
                self.send_now()
            except OSError:
                return  # the client stopped reading (or left): the connection is shut

    def _end(self, code: ErrorCodes | None) -> None:
        """GOAWAY (h2's own after a protocol error: ``code`` None) and stop.

        After an error the client may still be sending: its bytes are read and
        dropped for a while, as HTTP/1.1's lingering close does, so that the
        kernel does not answer them with a reset that destroys the GOAWAY.
        """
        if code is not None and not self.closed:
            self.h2.close_connection(code)
        try:
            self.send_now()
            if code is not ErrorCodes.NO_ERROR:
                sock = self.sock
                sock.shutdown(1)  # SHUT_WR: the GOAWAY is all we had to say
                give_up = time.monotonic() + LINGER_TIME
                while (left := give_up - time.monotonic()) > 0:
                    if not deadline.call(left, sock.recv, READ_SIZE):
                        break
        except OSError:
            pass  # gone, or lingered long enough

    def begin_drain(self) -> None:
        """The worker drains: GOAWAY now, the streams open finish, then the connection ends.

        h2 stops sending anything after its own GOAWAY, so this one is written
        beside it: streams up to the last one opened still send their answers.
        """
        if self.going_away or self.closed:
            return
        self.going_away = True
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        gevent.spawn(self._send_goaway, frame.serialize())

    def _send_goaway(self, frame: bytes) -> None:
        try:
            self.send_now(frame)
        except OSError:
            return
        if not self.streams:
            shutdown_read(self.sock)

    # -- closing ---------------------------------------------------------------------
    def _close(self) -> None:
        if not self.closed:
            try:
                self.send_now()  # what the writer had not sent yet
            except OSError:
                pass
        self.closed = True
        if self._writer is not None:
            self._writer.kill(block=False)
        for stream in list(self.streams.values()):
            stream.connection_lost()
        self.streams.clear()
        self.sock.close()

    def local_address(self) -> str:
        try:
            return str(self.sock.getsockname()[0])
        except (OSError, IndexError, TypeError):
            return "localhost"

    def log_error(self, message: str) -> None:
        self.ctx.log_error(f"{self.addr[0]}: {message}")


def shutdown_read(sock) -> None:
    """Wake the connection's read with EOF (its loop then sees it may end)."""
    try:
        sock.shutdown(0)  # SHUT_RD
    except OSError:
        pass
