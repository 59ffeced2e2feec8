"""One proxied exchange: pick an upstream, send the request, hand its response to the stream.

Socket code (upstream side only). A request runs in its client connection's
greenlet; a second greenlet exists only while a request body is still arriving
(it uploads while the first relays the response, so an upstream answering early
or echoing a stream never deadlocks). The response goes to the client through
the ``Stream`` the request came on: its body is a ``Relay`` the connection
pulls, which offers the rest of a large body of known length as a raw
``SocketSpan``; after a 101 it is a ``Tunnel``. Each side blocks on its own
socket, which is the backpressure: memory per connection is a read buffer or
two, whatever the body size (SPEC §5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

import gevent

from ..config.model import Route, Timeouts, Upstream
from ..http import deadline, h1write, pages
from ..http.h1read import BODY, END, HEAD, INFO, UPGRADE, Response, ResponseReader
from ..http.message import Response as Answer
from ..http.message import SocketSpan, Stream, Tunnel
from ..http.request import Abort, HTTPError, Request, printable
from ..http.urlpath import PATH_SAFE, rewrite
from ..http.wire import READ_SIZE, send_all
from . import headers
from .balancer import UpstreamGroup
from .headers import TrustedProxies
from .upstream import ConnectionPool, UpstreamError, abort

# What is left of a Content-Length body from this size on is offered to the
# connection raw (a ``SocketSpan``): no parser, no new bytes object per read.
PUMP_MIN = 256 * 1024
# RFC 9110 §9.2.2; these may be sent again when a first attempt got no answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class Target:
    """Where the proxy sends one request. Shared by every request to the same route."""

    group: UpstreamGroup
    route: Route | None
    strip_segments: int
    timeouts: Timeouts


class Exchange:
    """State of one request on its way through (possibly several) upstreams."""

    __slots__ = (
        "body_flowing",
        "body_started",
        "proxy",
        "req",
        "responded",
        "stream",
        "target",
        "up",
        "upload_error",
        "uploading",
    )

    def __init__(self, proxy: Proxy, stream: Stream, target: Target) -> None:
        self.proxy = proxy
        self.stream = stream
        self.req = stream.request
        self.target = target
        self.up: Upstream | None = None
        self.body_started = False  # a byte of a streamed body was taken from the client
        self.body_flowing = False  # the uploader greenlet is still moving the body
        self.responded = False  # the response head was handed to the client
        self.upload_error: HTTPError | None = None  # the client's body failed
        self.uploading = False  # a streamed body is still on its way

    def location(self, value: bytes) -> bytes:
        """``Location`` as the client should see it (SPEC §5); only called when present."""
        up, req, target = self.up, self.req, self.target
        base = up.base_path.encode()
        strip = target.strip_segments
        route = target.route
        if strip and ((route and route.strip_prefix) or base):
            segments = req.path.split("/")[1:strip + 1]
            prefix = quote("/" + "/".join(segments), safe=PATH_SAFE).encode()
        else:
            prefix = b"" if base else None
        return headers.rewrite_location(value, headers.upstream_origins(up), base,
                                        self.proxy.public_origin(req), prefix)


class Proxy:
    """A worker's proxying: its upstream connection pool and what each exchange needs."""

    def __init__(self, pool: ConnectionPool, trusted: TrustedProxies, header_limit: int) -> None:
        self.pool = pool
        self.trusted = trusted
        self.header_limit = header_limit

    def public_origin(self, req: Request) -> bytes:
        """scheme://host the client used; a trusted proxy's X-Forwarded-* win (SPEC §5)."""
        proto, host = req.scheme.encode(), req.header(b"host")
        if req.client_addr[0] in self.trusted:
            proto = (req.header(b"x-forwarded-proto") or proto).split(b",")[0].strip()
            host = (req.header(b"x-forwarded-host") or host or b"").split(b",")[0].strip()
        return proto + b"://" + host if host else b""

    def forward(self, stream: Stream, target: Target) -> None:
        """Proxy the stream's request. Raises HTTPError when no upstream answered it."""
        req = stream.request
        if headers.max_forwards_exhausted(req):
            stream.respond(_answer_here(req, target))
            return
        ex = Exchange(self, stream, target)
        # Small bodies have usually arrived with the head: take them now, so head and
        # body go out in one write and can be replayed on another connection.
        body = stream.buffered_body() if req.has_body else ()
        group = target.group
        retries = target.route.retries if target.route else 1
        tried: set[str] = set()
        sent_attempts = 0  # attempts that reached an upstream: only these use up ``retries``
        idempotent = req.method in IDEMPOTENT
        outcome = stream.outcome
        last: UpstreamError | None = None
        upstream_time = 0.0
        while (up := group.choose(req.client_addr[0], tried)) is not None:
            key = up.key
            tried.add(key)
            ex.up = up
            outcome.upstream = key
            group.acquire(up)
            started = time.monotonic()
            try:
                self._attempt(ex, up, body, idempotent)
            except UpstreamError as exc:
                group.failed(up)
                last = exc
                stream.log_error(f"upstream {key}: {exc.reason} "
                                 f"({req.method} {printable(req.raw_path)})")
                sent_attempts += exc.sent
                if (ex.responded or ex.body_started or not exc.retry
                        or (exc.sent and not idempotent) or sent_attempts > retries):
                    # Nothing can be replayed: the body is gone, the upstream may
                    # have acted on a non-idempotent request, or it timed out (SPEC §5).
                    break
            else:
                group.succeeded(up)
                return
            finally:
                group.release(up)
                upstream_time += time.monotonic() - started
                outcome.upstream_time = upstream_time
        error = HTTPError(last.reason, last.status) if last else HTTPError("no live upstream", 502)
        error.close = False  # the client's request was whole: its connection is still good
        raise error

    def _attempt(self, ex: Exchange, up: Upstream, body, idempotent: bool) -> None:
        """One upstream: send, relay; a stale pooled connection is retried once, fresh."""
        req, target, stream = ex.req, ex.target, ex.stream
        route = target.route
        path = req.raw_path
        strip = target.strip_segments
        if up.base_path or (strip and route and route.strip_prefix):
            path = rewrite(path, strip, up.base_path)
        head = headers.request_head(
            req, path + b"?" + req.query if req.query else path, up,
            preserve_host=bool(route and route.preserve_host),
            trusted=req.client_addr[0] in self.trusted,
            websocket=req.upgrade,
        )
        if body:
            head += (b"".join(h1write.chunk(p) for p in body)
                     + h1write.trailer_block(stream.trailers)) if req.chunked else b"".join(body)
        elif req.chunked and body is not None:
            head += h1write.trailer_block(stream.trailers)
        replayable = idempotent and body is not None
        head_request = req.method == "HEAD"
        pool = self.pool
        for fresh in (False, True):
            sock, reused, reader = pool.get(up, target.timeouts.connect, fresh=fresh)
            # The connection's own reader when it is pooled with one (``reusable``).
            if reader is None:
                reader = ResponseReader(self.header_limit, head_request)
            else:
                reader.reset(head_request)
            sock.settimeout(target.timeouts.read)
            kept = False  # the reader stays with the pooled connection
            try:
                if _exchange(ex, sock, reader, head, body is None):
                    kept = reader.reusable()
                    pool.put(up, sock, reader if kept else None)
                else:
                    sock.close()
                return
            except UpstreamError as exc:
                sock.close()
                if exc.stale and reused and replayable and not fresh:
                    continue  # the upstream closed this idle connection: try a new one
                raise
            except BaseException:
                sock.close()
                raise
            finally:
                if not kept:
                    reader.release()


def _answer_here(req: Request, target: Target) -> Answer:
    """Max-Forwards reached 0: Rex is the final recipient (RFC 9110 §7.6.2)."""
    if req.method == "TRACE":
        return pages.response(200, headers.trace_echo(req), content_type=b"message/http")
    methods = target.route.methods if target.route else None
    if methods and "GET" in methods:
        methods = methods | {"HEAD"}  # as routing does (RFC 9110 §9.3.2)
    allow = ", ".join(sorted(methods)) if methods else headers.DEFAULT_ALLOW.decode()
    return pages.response(200, b"", headers=(("Allow", allow),), content_type=b"text/plain")


def _exchange(ex: Exchange, sock, reader: ResponseReader, head: bytes, streaming: bool) -> bool:
    """Send the request, hand the response to the stream. True when ``sock`` can be pooled."""
    stream = ex.stream
    uploader = None
    try:
        send_all(sock, head)
    except OSError as exc:
        # Nothing was answered yet: a pooled connection the upstream had closed.
        raise UpstreamError(f"sending to upstream failed: {exc}", stale=True) from None
    if streaming:
        stream.expect_continue()
        ex.uploading = True
        uploader = gevent.spawn(_upload, ex, sock)
    else:
        # Only this greenlet uses the socket now: its reads get a cheap deadline
        # instead of the socket's timeout (``deadline``); the pool sets it back.
        sock.settimeout(None)
    try:
        relay = Relay(ex, sock, reader)
        resp = relay.head()
        fields = headers.response_fields(resp, ex.location)
        ex.responded = True
        if resp.upgrade:
            if not ex.req.upgrade:
                raise Abort()  # checked in head(): unreachable, but never tunnel unasked
            early = b"".join(p for kind, p in reader.events if kind == UPGRADE)
            reader.events.clear()
            stream.respond(Answer(101, fields, Tunnel(sock, early), reason=resp.reason))
            return False
        stream.respond(Answer(resp.status, fields, relay, resp.content_length,
                              reason=resp.reason))
        return relay.reusable()
    finally:
        if uploader is not None:
            uploader.kill()  # a no-op when the body was sent; else the response won


def _upload(ex: Exchange, sock) -> None:
    """Second greenlet: pump the rest of the client's body upstream as it arrives."""
    stream = ex.stream
    chunked = ex.req.chunked
    ex.body_flowing = True
    try:
        for piece in stream.body():
            ex.body_started = True
            send_all(sock, h1write.chunk(piece) if chunked else piece)
        if chunked:
            send_all(sock, h1write.trailer_block(stream.trailers))
        ex.uploading = False
    except HTTPError as exc:
        # The client's body is broken (too large, malformed, timed out): the
        # request can never be completed. Reset the upstream connection so the
        # upstream cannot act on a truncated body; that also wakes the relay.
        ex.upload_error = exc
        abort(sock)
    except OSError:
        pass  # the upstream stopped reading: its response, if any, tells the story
    finally:
        ex.body_flowing = False


class Relay:
    """The upstream's response, read as the connection pulls its body.

    ``head()`` reads up to the final response head (relaying 1xx interim
    responses to the stream); iterating then yields the body as it arrives:
    first whatever came with the head (possibly ``b""``, so the head goes out at
    once), then one piece per upstream read, or, for the rest of a large body of
    known length, one ``SocketSpan`` for the connection to move raw. ``done``
    tells the connection no more is coming; ``trailers`` are set at the end.
    """

    __slots__ = ("_eof", "_first", "_read_any", "_received", "_timeout", "done", "ex",
                 "reader", "sock", "trailers")

    def __init__(self, ex: Exchange, sock, reader: ResponseReader) -> None:
        self.ex = ex
        self.sock = sock
        self.reader = reader
        # None: an upload shares the socket, and the socket's own timeout applies.
        self._timeout = None if ex.uploading else ex.target.timeouts.read
        self._read_any = False  # a byte came back on this connection
        self._eof = False  # the upstream closed: its connection cannot be pooled
        self._first = True
        self._received = 0  # body bytes taken from the parser (or handed over raw)
        self.done = False
        self.trailers: list = []

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

    def __iter__(self) -> Relay:
        return self

    def __next__(self) -> bytes | SocketSpan:
        if self.done:
            raise StopIteration
        events = self.reader.events
        while True:
            pieces = []
            while events:
                kind, payload = events.popleft()
                if kind == BODY:
                    pieces.append(payload)
                elif kind == END:
                    self.trailers = payload
                    self.done = True
                    break
            if pieces:
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                self._received += len(data)
                self._first = False
                return data
            if self.done:
                raise StopIteration
            if self._first:
                self._first = False
                return b""  # the head goes out now, before any body (SSE, long polls)
            final = self.reader.final
            left = (final.content_length - self._received
                    if final.content_length is not None else 0)
            if left >= PUMP_MIN:
                # A large body of known length: what is left of it is plain bytes.
                self.done = True
                self._received += left
                return SocketSpan(self.sock, left, self._timeout)
            self._read()

    def reusable(self) -> bool:
        """Once the body was handed over whole: may the upstream connection be pooled?"""
        ex, reader = self.ex, self.reader
        if not (self.done and reader.final.keep_alive and not ex.uploading
                and ex.upload_error is None):
            return False
        # Ended by the parser: only if the end came in data (not the upstream's
        # close) and nothing followed it. Ended raw: the span was exactly the body.
        return not (self._eof or reader.leftover) if reader.done else True

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
            _fail(ex, UpstreamError(f"upstream failed: {exc}", sent=True,
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


def _fail(ex: Exchange, exc: UpstreamError) -> None:
    """Raise what the failure means for this client at this point of the exchange."""
    if ex.responded:
        raise Abort()
    if ex.upload_error is not None:
        raise ex.upload_error
    raise exc
