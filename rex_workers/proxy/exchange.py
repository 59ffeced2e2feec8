"""One proxied exchange: pick an upstream, send the request, hand its response to the stream.

Socket code (upstream side only). A request body is read whole before an
upstream is chosen (in memory, then a temp file: ``buffer_requests``), so a
slow client never holds an upstream; with ``buffer_requests: false`` it streams,
and a second greenlet uploads it while the first relays the response (an
upstream answering early or echoing a stream never deadlocks). The response goes
to the client through the ``Stream`` the request came on: its body is a
``Relay`` (``relay.py``) the connection pulls, which reads ahead of a slow
client when it may; after a 101 it is a ``Tunnel``.
"""

from __future__ import annotations

import time

import gevent

from rex_static.sendfile import send_file

from ..config.model import Upstream
from ..http import h1write, pages
from ..http.h1read import UPGRADE, ResponseReader
from ..http.message import FileRegion, Stream, Tunnel
from ..http.message import Response as Answer
from ..http.request import Abort, HTTPError, Request, printable
from ..http.urlpath import rewrite
from ..http.wire import PlainSocket, send_all
from . import headers
from .headers import TrustedProxies
from .relay import Buffers, Relay
from .spool import Spool
from .state import Exchange, Target
from .upstream import ConnectionPool, UpstreamError, abort, send_problem

# RFC 9110 §9.2.2; these may be sent again when a first attempt got no answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose Max-Forwards a proxy honours (RFC 9110 §7.6.2; ``max_forwards_exhausted``).
_MAX_FORWARDS = frozenset({"TRACE", "OPTIONS"})


class Proxy:
    """A worker's proxying: its upstream connection pool and what each exchange needs."""

    def __init__(self, pool: ConnectionPool, trusted: TrustedProxies, header_limit: int,
                 buffers: Buffers) -> None:
        self.pool = pool
        self.trusted = trusted
        self.header_limit = header_limit
        self.buffers = buffers

    def forward(self, stream: Stream, target: Target) -> None:
        """Proxy the stream's request. Raises HTTPError when no upstream answered it."""
        req = stream.request
        if req.method in _MAX_FORWARDS and headers.max_forwards_exhausted(req):
            stream.respond(_answer_here(req, target))
            return
        ex = Exchange(stream, target, self.trusted)
        # Small bodies have usually arrived with the head: take them now, so head and
        # body go out in one write and can be replayed on another connection.
        # ``req.has_body`` written out: a property read is a call, on every request.
        body = stream.buffered_body() if req.chunked or req.content_length else ()
        route = target.route
        if body is None and not req.upgrade and (route is None or route.buffer_requests):
            body = self._read_body(stream)
        group = target.group
        retries = route.retries if route else 1
        tried: tuple[str, ...] = ()  # keys already tried (a tuple: no call to add one)
        sent_attempts = 0  # attempts that reached an upstream: only these use up ``retries``
        idempotent = req.method in IDEMPOTENT
        outcome = stream.outcome
        last: UpstreamError | None = None
        upstream_time = 0.0
        try:
            while (up := group.take(req.client_addr[0], tried)) is not None:
                key = up.key
                tried += (key,)
                ex.up = up
                outcome.upstream = key
                started = time.monotonic()
                ex.upstream_end = 0.0
                try:
                    self._attempt(ex, up, body, idempotent, started)
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
                    if group.passive:
                        group.succeeded(up)
                    return
                finally:
                    group.release(up)
                    # Until the upstream was done: a response read ahead of a slow
                    # client counts the upstream's time, not the client's.
                    upstream_time += (ex.upstream_end or time.monotonic()) - started
                    outcome.upstream_time = upstream_time
        finally:
            if type(body) is Spool:
                body.close()
        error = HTTPError(last.reason, last.status) if last else HTTPError("no live upstream", 502)
        error.close = False  # the client's request was whole: its connection is still good
        raise error

    def _read_body(self, stream: Stream) -> Spool:
        """The whole request body, before any upstream hears of it (``buffer_requests``)."""
        spool = self.buffers.request()
        try:
            for piece in stream.body():  # sends the 100 (Continue) the client waits for
                spool.write(piece)
        except OSError as exc:
            spool.close()
            # The temp file failed (no such directory, disk full): nginx answers 500 too.
            raise HTTPError(f"cannot buffer the request body: {exc}", 500) from None
        except BaseException:
            spool.close()
            raise
        spool.end()
        return spool

    def _attempt(self, ex: Exchange, up: Upstream, body, idempotent: bool,
                 started: float) -> None:
        """One upstream: send, relay; a stale pooled connection is retried once, fresh.
        ``started``: when the attempt began (the pool's clock for idle connections)."""
        req, target, stream = ex.req, ex.target, ex.stream
        route = target.route
        if target.rewrite is not None:  # the route's rewrite: path and query as it says
            request_target = target.rewrite(req, self.trusted.__contains__)
        else:
            path = req.raw_path
            strip = target.strip_segments
            if up.base_path or (strip and route and route.strip_prefix):
                path = rewrite(path, strip, up.base_path)
            request_target = path + b"?" + req.query if req.query else path
        if type(body) is tuple:  # no body (or an announced empty one): the common case
            parts, length, chunked = (), req.content_length, False
        else:
            parts, length, chunked = _request_body(body, req, stream.trailers)
        head = headers.request_head(
            req, request_target, up,
            preserve_host=bool(route and route.preserve_host),
            trusted=req.client_addr[0] in self.trusted,
            websocket=req.upgrade, length=length, chunked=chunked,
        )
        replayable = idempotent and body is not None
        head_request = req.method == "HEAD"
        buffers = self.buffers if route is None or route.buffer_responses else None
        pool = self.pool
        for fresh in (False, True):
            sock, reused, reader = pool.get(up, target.timeouts.connect, fresh=fresh,
                                            now=started)
            # The connection's own reader when it is pooled with one (``reusable``).
            if reader is None:
                reader = ResponseReader(self.header_limit, head_request)
            else:
                reader.reset(head_request)
            relay = Relay(ex, pool, up, sock, reader, buffers)
            try:
                _exchange(ex, relay, head, parts, body is None)
                return
            except UpstreamError as exc:
                relay.release(False)
                if exc.stale and reused and replayable and not fresh:
                    continue  # the upstream closed this idle connection: try a new one
                raise
            except BaseException:
                relay.release(False)
                raise
            finally:
                ex.upstream_end = relay.done_at


def _request_body(body, req: Request, trailers: list) -> tuple[list, int | None, bool]:
    """(what follows the head, the Content-Length to send, whether to send it chunked)
    for a body that was (``list``, ``Spool``) or is (None) on its way.

    A whole body goes with its length, also one that came chunked (RFC 9112 §6.3)
    unless it had trailers, which only chunked framing can carry on. A body still
    arriving (``buffer_requests: false``) keeps the framing it came with.
    """
    if body is None:
        return [], req.content_length, req.chunked
    parts = body.parts() if type(body) is Spool else list(body)
    if not req.chunked or not trailers:
        length = sum(p.count if type(p) is FileRegion else len(p) for p in parts)
        return parts, length, False
    framed: list = []
    for part in parts:
        if type(part) is FileRegion:
            framed += (b"%x\r\n" % part.count, part, b"\r\n")
        elif part:
            framed.append(h1write.chunk(part))
    framed.append(h1write.trailer_block(trailers))
    return framed, None, True


def _answer_here(req: Request, target: Target) -> Answer:
    """Max-Forwards reached 0: Rex is the final recipient (RFC 9110 §7.6.2)."""
    if req.method == "TRACE":
        return pages.response(200, headers.trace_echo(req), content_type=b"message/http")
    methods = target.route.methods if target.route else None
    if methods and "GET" in methods:
        methods = methods | {"HEAD"}  # as routing does (RFC 9110 §9.3.2)
    allow = ", ".join(sorted(methods)) if methods else headers.DEFAULT_ALLOW.decode()
    return pages.response(200, b"", headers=(("Allow", allow),), content_type=b"text/plain")


def _exchange(ex: Exchange, relay: Relay, head: bytes, parts: list, streaming: bool) -> None:
    """Send the request, hand the response to the stream; the upstream connection is released,
    once, by ``relay``."""
    stream = ex.stream
    sock = relay.sock
    uploader = None
    # What is in memory goes with the head; a body spooled to disk follows from a
    # greenlet of its own, so the response is read meanwhile (an upstream that
    # answers while it reads, as an echo does, never deadlocks).
    out, split, rest = head, 0, False
    if parts:
        split = next((n for n, part in enumerate(parts) if type(part) is FileRegion),
                     len(parts))
        rest = split < len(parts)
        if split:
            out = b"".join([head, *parts[:split]])
    timeout = ex.target.timeouts.read
    # An upload shares the socket after the head, and a TLS socket's send waits by
    # itself: both wait as the socket's timeout says. A plain socket alone with this
    # greenlet needs it only for what the kernel does not take at once (``wait``).
    shared = streaming or rest or type(sock) is not PlainSocket
    if shared:
        sock.settimeout(timeout)
    try:
        send_all(sock, out, wait=timeout)
    except OSError as exc:
        # Nothing was answered yet: a pooled connection the upstream had closed.
        raise UpstreamError(f"sending to upstream failed: {send_problem(sock, exc)}",
                            stale=True) from None
    if streaming:
        stream.expect_continue()
        ex.uploading = True
        uploader = gevent.spawn(_upload, ex, sock)
    elif rest:
        ex.uploading = True
        uploader = gevent.spawn(_upload_parts, ex, sock, parts[split:])
    elif sock.timeout is not None:
        # Only this greenlet uses the socket now: its reads get a cheap deadline
        # instead of the socket's timeout (``deadline``); a slot read tells whether
        # it has one to take off (a fresh connection's, a pooled upload's).
        sock.settimeout(None)
    try:
        resp = relay.head()
        fields = headers.response_fields(resp, ex.location)
        ex.responded = True
        if resp.upgrade:
            if not ex.req.upgrade:
                raise Abort()  # checked in head(): unreachable, but never tunnel unasked
            events = relay.reader.events
            early = b"".join(p for kind, p in events if kind == UPGRADE)
            events.clear()
            stream.respond(Answer(101, fields, Tunnel(sock, early), reason=resp.reason))
            return  # the tunnel is over: ``close`` below closes the socket
        # A small answer is all in hand with its head: it goes out as bytes, in one
        # send, its upstream connection back in the pool first.
        body = relay.whole()
        stream.respond(Answer(resp.status, fields, relay if body is None else body,
                              resp.content_length, reason=resp.reason))
    finally:
        relay.close()
        if uploader is not None:
            uploader.kill()  # a no-op when the body was sent; else the response won


def _upload_parts(ex: Exchange, sock, parts: list) -> None:
    """Second greenlet: the rest of a buffered body, file spans with sendfile."""
    try:
        for part in parts:
            if type(part) is not FileRegion:
                send_all(sock, part)
            elif send_file(sock, part.fd, part.offset, part.count) < part.count:
                raise OSError("the buffered request body shrank")
        ex.uploading = False
    except OSError:
        pass  # the upstream stopped reading: its response, if any, tells the story


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
