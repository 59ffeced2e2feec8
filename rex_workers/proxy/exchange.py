"""One proxied exchange: pick an upstream, send the request, relay the response.

Socket code. A request runs in its client connection's greenlet; a second
greenlet exists only while a request body is still arriving (it uploads while
the first relays the response, so an upstream answering early or echoing a
stream never deadlocks). After a 101 the exchange becomes a ``tunnel``.
Each side blocks on its own socket, which is the backpressure: memory per
connection is a read buffer or two, whatever the body size (SPEC §5).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import gevent

from ..http import deadline, pages
from ..http.http1 import BODY, END, HEAD, INFO, ResponseReader
from ..http.request import HTTPError, Request, printable
from ..http.urlpath import PATH_SAFE, rewrite
from ..http.wire import send_all
from ..serve.tunnel import tunnel
from . import headers
from .upstream import UpstreamError, abort

if TYPE_CHECKING:
    from ..config.model import Upstream
    from ..serve.conn import ClientConn
    from ..serve.site import Target

READ_SIZE = 65536
# A Content-Length body with at least this much left is relayed raw (``_pump``):
# no parser, no new bytes object per read, reads of PUMP_SIZE into one buffer.
PUMP_MIN = 256 * 1024
PUMP_SIZE = 256 * 1024
# RFC 9110 §9.2.2; these may be sent again when a first attempt got no answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Abort(Exception):
    """The response had started when the exchange failed: close the client connection."""


class Exchange:
    """State of one request on its way through (possibly several) upstreams."""

    __slots__ = (
        "body_flowing",
        "body_started",
        "conn",
        "req",
        "responded",
        "sent",
        "status",
        "target",
        "up",
        "upload_error",
        "uploading",
    )

    def __init__(self, conn: ClientConn, req: Request, target: Target) -> None:
        self.conn = conn
        self.req = req
        self.target = target
        self.up: Upstream | None = None
        self.body_started = False  # a byte of a streamed body was taken from the client
        self.body_flowing = False  # the uploader greenlet is still moving the body
        self.responded = False  # a byte of the response was handed to the client
        self.status = 0
        self.sent = 0
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
                                        _public_origin(req, self.conn), prefix)


def _public_origin(req: Request, conn: ClientConn) -> bytes:
    """scheme://host the client used; a trusted proxy's X-Forwarded-* win (SPEC §5)."""
    proto, host = req.scheme.encode(), req.header(b"host")
    if req.client_addr[0] in conn.rt.trusted:
        proto = (req.header(b"x-forwarded-proto") or proto).split(b",")[0].strip()
        host = (req.header(b"x-forwarded-host") or host or b"").split(b",")[0].strip()
    return proto + b"://" + host if host else b""


def forward(conn: ClientConn, req: Request, target: Target) -> tuple[int, int]:
    """Proxy ``req``; returns (status, body bytes sent). Raises HTTPError before responding."""
    if headers.max_forwards_exhausted(req):
        return _answer_here(conn, req, target)
    ex = Exchange(conn, req, target)
    # Small bodies have usually arrived with the head: take them now, so head and
    # body go out in one write and can be replayed on another connection.
    body = conn.buffered_body() if req.has_body else ()
    group = target.group
    retries = target.route.retries if target.route else 1
    tried: set[str] = set()
    sent_attempts = 0  # attempts that reached an upstream: only these use up ``retries``
    idempotent = req.method in IDEMPOTENT
    extra = req.extra
    last: UpstreamError | None = None
    upstream_time = 0.0
    while (up := group.choose(req.client_addr[0], tried)) is not None:
        key = up.key
        tried.add(key)
        ex.up = up
        extra["upstream"] = key
        group.acquire(up)
        started = time.monotonic()
        try:
            _attempt(ex, up, body, idempotent)
        except UpstreamError as exc:
            group.failed(up)
            last = exc
            conn.log_error(f"upstream {key}: {exc.reason} ({req.method} {printable(req.raw_path)})")
            sent_attempts += exc.sent
            if (ex.responded or ex.body_started or not exc.retry
                    or (exc.sent and not idempotent) or sent_attempts > retries):
                # Nothing can be replayed: the body is gone, the upstream may
                # have acted on a non-idempotent request, or it timed out (SPEC §5).
                break
        except Abort:
            extra["status"], extra["sent"] = ex.status, ex.sent  # for the access log
            raise
        else:
            group.succeeded(up)
            return ex.status, ex.sent
        finally:
            group.release(up)
            upstream_time += time.monotonic() - started
            extra["upstream_time"] = upstream_time
    error = HTTPError(last.reason, last.status) if last else HTTPError("no live upstream", 502)
    error.close = False  # the client's request was whole: its connection is still good
    raise error


def _answer_here(conn: ClientConn, req: Request, target: Target) -> tuple[int, int]:
    """Max-Forwards reached 0: Rex is the final recipient (RFC 9110 §7.6.2)."""
    if req.method == "TRACE":
        body, ctype, extra = headers.trace_echo(req), b"message/http", ()
    else:
        methods = target.route.methods if target.route else None
        if methods and "GET" in methods:
            methods = methods | {"HEAD"}  # as routing does (RFC 9110 §9.3.2)
        allow = ", ".join(sorted(methods)) if methods else headers.DEFAULT_ALLOW.decode()
        body, ctype, extra = b"", b"text/plain", (("Allow", allow),)
    conn.send(pages.response(200, body, keep_alive=conn.keep_alive and req.keep_alive,
                             headers=extra, content_type=ctype, version=req.version))
    return 200, len(body)


def _attempt(ex: Exchange, up: Upstream, body, idempotent: bool) -> None:
    """One upstream: send, relay; a stale pooled connection is retried once, fresh."""
    conn, req, target = ex.conn, ex.req, ex.target
    pool = conn.rt.pool
    route = target.route
    path = req.raw_path
    strip = target.strip_segments
    if up.base_path or (strip and route and route.strip_prefix):
        path = rewrite(path, strip, up.base_path)
    websocket = req.upgrade
    head = headers.request_head(
        req, path + b"?" + req.query if req.query else path, up,
        preserve_host=bool(route and route.preserve_host),
        trusted=req.client_addr[0] in conn.rt.trusted,
        websocket=websocket,
    )
    if body:
        head += (b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in body)
                 + headers.trailer_block(conn.trailers)) if req.chunked else b"".join(body)
    elif req.chunked and body is not None:
        head += headers.trailer_block(conn.trailers)
    replayable = idempotent and body is not None
    head_request = req.method == "HEAD"
    for fresh in (False, True):
        sock, reused, reader = pool.get(up, target.timeouts.connect, fresh=fresh)
        # The connection's own reader when it is pooled with one (``reusable``).
        if reader is None:
            reader = ResponseReader(conn.rt.limits.header_bytes, head_request)
        else:
            reader.reset(head_request)
        sock.settimeout(target.timeouts.read)
        kept = False  # the reader stays with the pooled connection
        try:
            if _exchange(ex, sock, reader, head, body is None, websocket):
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


def _exchange(ex: Exchange, sock, reader: ResponseReader, head: bytes, streaming: bool,
              websocket: bool) -> bool:
    """Send the request, relay the response. True when ``sock`` can be pooled."""
    uploader = None
    try:
        send_all(sock, head)
    except OSError as exc:
        # Nothing was answered yet: a pooled connection the upstream had closed.
        raise UpstreamError(f"sending to upstream failed: {exc}", stale=True) from None
    if streaming:
        ex.conn.expect_continue()
        ex.uploading = True
        uploader = gevent.spawn(_upload, ex, sock)
    else:
        # Only this greenlet uses the socket now: its reads get a cheap deadline
        # instead of the socket's timeout (``deadline``); the pool sets it back.
        sock.settimeout(None)
    try:
        return _relay(ex, sock, reader, websocket)
    finally:
        if uploader is not None:
            uploader.kill()  # a no-op when the body was sent; else the response won


def _upload(ex: Exchange, sock) -> None:
    """Second greenlet: pump the rest of the client's body upstream as it arrives."""
    conn = ex.conn
    chunked = ex.req.chunked
    ex.body_flowing = True
    try:
        for piece in conn.body_pieces():
            ex.body_started = True
            send_all(sock, b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            send_all(sock, headers.trailer_block(conn.trailers))
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


def _relay(ex: Exchange, sock, reader: ResponseReader, websocket: bool) -> bool:
    """Read the response and hand it to the client as it comes. True: ``sock`` reusable."""
    req = ex.req
    events = reader.events
    out: list[bytes] = []  # for the client; flushed before every blocking read
    chunk_out = False
    got_any = False
    read_timeout = None if ex.uploading else ex.target.timeouts.read
    while True:
        try:
            # None: an upload shares the socket, and the socket's own timeout applies.
            data = deadline.call(read_timeout, sock.recv, READ_SIZE)
        except TimeoutError:
            if ex.body_flowing:
                # The upstream may rightly wait for the whole body: its read timer
                # starts once the body is sent (nginx: proxy_read_timeout). A stalled
                # client is the uploader's to time out (408), not the upstream's fault.
                continue
            _fail(ex, UpstreamError("upstream read timed out", 504, sent=True, retry=False))
        except OSError as exc:
            _fail(ex, UpstreamError(f"upstream failed: {exc}", sent=True, stale=not got_any))
        try:
            if data:
                got_any = True
                reader.feed(data)
            elif got_any or ex.upload_error:
                reader.feed_eof()
            else:
                _fail(ex, UpstreamError("upstream closed the connection before answering",
                                        sent=True, stale=True))
        except HTTPError as exc:
            _fail(ex, UpstreamError(exc.reason, 502, sent=True))
        while events:
            kind, payload = events.popleft()
            if kind == BODY:
                ex.sent += len(payload)
                out.append(b"%x\r\n%b\r\n" % (len(payload), payload) if chunk_out else payload)
            elif kind == HEAD:
                if payload.upgrade:
                    if not websocket:
                        _fail(ex, UpstreamError("101 from upstream without an upgrade request",
                                                sent=True, retry=False))
                    tunnel(ex, sock, payload, events)
                    return False
                reader.final = payload
                head, chunk_out = _response_head(ex, payload)
                out.append(head)
                ex.responded = True
            elif kind == END:
                if chunk_out:
                    out.append(headers.trailer_block(payload))
                _flush(ex, out)
                return (bool(data) and not reader.leftover and reader.final.keep_alive
                        and not ex.uploading and ex.upload_error is None)
            elif kind == INFO and req.version == "1.1" and payload.status != 100:
                # 103 Early Hints and the like reach HTTP/1.1 clients; a 100 is not
                # relayed, as Rex has answered the client's Expect itself.
                out.append(headers.interim_head(payload))
        final = reader.final
        if (final is not None and final.content_length is not None and not reader.done
                and final.content_length - ex.sent >= PUMP_MIN):
            # A large body of known length: what is left of it is plain bytes.
            _flush(ex, out)
            _pump(ex, sock, final.content_length - ex.sent, read_timeout)
            return (final.keep_alive and not ex.uploading and ex.upload_error is None)
        if out:
            _flush(ex, out)


def _pump(ex: Exchange, sock, left: int, read_timeout: float | None) -> None:
    """Relay the last ``left`` bytes of a Content-Length body as they are.

    Reads never go past the body, so bytes an upstream sends after it stay in
    the socket, where the pool's check finds them. The response has started:
    any failure cuts the client's connection (``Abort``), the only honest end.
    """
    buf = memoryview(bytearray(min(left, PUMP_SIZE)))
    send = ex.conn.send
    while left:
        piece = buf[:left] if left < len(buf) else buf
        try:
            n = deadline.call(read_timeout, sock.recv_into, piece)
        except OSError:  # TimeoutError included
            raise Abort() from None
        if not n:
            raise Abort()  # the upstream closed in the middle of the body
        left -= n
        ex.sent += n
        try:
            send(piece[:n])
        except OSError:
            raise Abort() from None  # the client went away or stalled past the read timeout


def _flush(ex: Exchange, out: list[bytes]) -> None:
    if not out:
        return
    try:
        ex.conn.send(out[0] if len(out) == 1 else b"".join(out))
    except OSError:
        raise Abort() from None  # the client went away or stalled past the read timeout
    out.clear()


def _fail(ex: Exchange, exc: UpstreamError) -> None:
    """Raise what the failure means for this client at this point of the exchange."""
    if ex.responded:
        raise Abort()
    if ex.upload_error is not None:
        raise ex.upload_error
    raise exc


def _response_head(ex: Exchange, resp) -> tuple[bytes, bool]:
    """The head for the client, and whether Rex must chunk the body itself."""
    req, conn = ex.req, ex.conn
    ex.status = status = resp.status
    chunk_out = False
    if req.method == "HEAD" or status == 304 or status == 204:
        # No body follows (RFC 9110 §6.4.1); Content-Length may still describe
        # the representation, except on a 204.
        framing = (b"Content-Length: %d\r\n" % resp.content_length
                   if resp.content_length is not None and status != 204 else b"")
    elif resp.content_length is not None:
        framing = b"Content-Length: %d\r\n" % resp.content_length
    elif req.version == "1.1":
        framing = b"Transfer-Encoding: chunked\r\n"
        chunk_out = True
    else:
        framing = b""  # an HTTP/1.0 client: the body ends when we close
        conn.keep_alive = False
    if ex.uploading or conn.rt.draining or not req.keep_alive:
        # The body was not read to its end (an early answer), or we are leaving.
        conn.keep_alive = False
    if not conn.keep_alive:
        connection = headers.CLOSE
    else:
        connection = headers.KEEP_ALIVE if req.version == "1.0" else b""
    return headers.response_head(resp, connection=connection, framing=framing,
                                 location=ex.location), chunk_out
