"""HTTP/1.1 message readers over bytes: httptools (llhttp) frames, this module judges.

May: turn bytes from a client or an upstream into events (the framing rules
and size budgets they apply live in ``framing``), check the request line,
version, Host and target, and stop at the head of a response to HEAD.
May not: touch sockets, import gevent, decide routing. Protocol errors are
``HTTPError`` carrying the status the client should get (400/431/501 for a
client, 502 for an upstream); the connection handler turns them into responses
in one place.
"""

from __future__ import annotations

import httptools

from . import h1fast
from .authority import authority_error, host_only
from .framing import BODY, END, FAIL, HEAD, INFO, UPGRADE, Fields, Reader, Response
from .request import HTTPError, Request

__all__ = ["BODY", "END", "FAIL", "HEAD", "INFO", "UPGRADE", "RequestReader", "Response",
           "ResponseReader"]

class RequestReader(Reader):
    """Feeds a client connection's bytes to llhttp; queues (kind, payload) events.

    One reader lives as long as the connection: keep-alive and pipelined
    requests come out in order. Nothing is buffered beyond what one ``feed``
    produced, so memory stays bounded by the read size.
    """

    def __init__(self, header_limit: int, client_addr: tuple[str, int] = ("", 0),
                 server_port: int = 0, scheme: str = "http", *, line_limit: int = 0,
                 field_count: int = 0, field_limit: int = 0, fast: bool = True) -> None:
        """Limits (``limits.*``, docs/reliability.md): ``header_limit`` bytes of field lines,
        ``line_limit`` bytes of request line (414), ``field_count`` field lines and
        ``field_limit`` bytes of one (431); 0: bounded by ``header_limit`` alone.
        ``fast``: plain heads take the fast lane (``h1fast``); False for llhttp alone."""
        super().__init__(header_limit, 400, field_count, field_limit)
        # The line without its CRLF: method, target, " HTTP/1.1" and one more space.
        # llhttp knows no method over 16 bytes: it is looked at only near the limit.
        self._line_limit = min(line_limit or header_limit, header_limit)  # the head holds it too
        self._url = b""
        self._parser = httptools.HttpRequestParser(self)
        self._client_addr = client_addr
        self._server_port = server_port
        self._scheme = scheme
        self._close_after = False  # the current request asked to close the connection
        self._closing = False  # ... and it is complete: what follows is not a request
        # The fast lane (``h1fast``) may take a head only where llhttp stands between
        # messages, and only one that is well inside every size limit.
        self._at_start = fast
        self._fast = h1fast.bounds(header_limit, self._line_limit, field_count or header_limit,
                                   field_limit or header_limit)
        self.upgraded = False
        self.failed = False  # a FAIL event was queued: later bytes are not parsed

    # -- httptools callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        self._at_start = False
        self._fields.reset()
        self._url = b""
        self._trailers = None
        self._trailer_size = 0
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self._ticks += 1
        self._url += url
        if len(self._url) + 32 > self._line_limit \
                and len(self._parser.get_method()) + len(self._url) + 10 > self._line_limit:
            raise HTTPError("request line too long", 414)

    def on_headers_complete(self) -> None:
        self.in_head = False
        req = self._build()
        self._close_after = not req.keep_alive
        self.events.append((HEAD, req))

    def on_message_complete(self) -> None:
        self._closing = self._close_after
        self._at_start = True
        self.events.append((END, self._trailers or []))

    # -- feeding ----------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse ``data``; events land in ``self.events``.

        A protocol error does not raise: it is queued as a ``FAIL`` event after
        the requests parsed before it, so pipelined requests that were valid get
        their answers first and the bad one its 4xx, in order. Nothing after the
        error is parsed.
        """
        if self.failed:
            return
        if self._closing:
            # RFC 9112 §9.6: bytes after a request with "Connection: close" are
            # not requests; that request is answered, the rest ignored.
            self.failed = True
            return
        if self._at_start:
            data = self._take_fast(data)
            if not data:
                return
        ticks, events = self._ticks, len(self.events)
        try:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self.upgraded = True
                self.events.append((UPGRADE, data[exc.args[0]:]))
                return
            except httptools.HttpParserCallbackError as exc:
                raise (exc.__context__ if isinstance(exc.__context__, HTTPError)
                       else HTTPError(f"bad request: {exc}")) from None
            except httptools.HttpParserInvalidMethodError:
                raise HTTPError("invalid method", 400) from None
            except httptools.HttpParserError as exc:
                if self._closing:  # bytes after a "Connection: close" request (above)
                    self.failed = True
                    return
                raise HTTPError(f"bad request: {exc}", 400) from None
            self._account(len(data), ticks, events)
        except HTTPError as exc:
            self.failed = True
            self.events.append((FAIL, exc))

    def _take_fast(self, data: bytes) -> bytes:
        """Take the plain heads at the front of ``data`` (``h1fast``); return the rest."""
        events = self.events
        while data:
            req, end = h1fast.take(data, self._fast, self._client_addr, self._server_port,
                                   self._scheme)
            if req is None:
                return data  # not plainly valid, or not whole: llhttp judges it
            events.append((HEAD, req))
            events.append((END, []))
            self._quiet = 0
            data = data[end:]
            if not req.keep_alive:
                self._closing = True  # what follows is ignored, as after llhttp's close
                return b""
        return data

    def _build(self) -> Request:
        f = self._fields
        p = self._parser
        version = p.get_http_version()
        method = p.get_method().decode("ascii")
        if version != "1.1":
            _check_version(version, f)
        f.finish()
        if f.hosts != 1 and (version == "1.1" or f.hosts):
            # RFC 9112 §3.2: 400 for a missing Host in HTTP/1.1 and for more than one.
            raise HTTPError("missing or repeated Host header", 400)
        target = self._url
        if b"#" in target:
            # A fragment is never part of a request target (RFC 9112 §3.2).
            raise HTTPError("fragment in request target", 400)
        raw_path, _, query = target.partition(b"?")
        headers = f.headers
        host = f.host
        if host and (why := authority_error(host)):
            # RFC 9112 §3.2: MUST 400 for an invalid Host value, whatever the target.
            raise HTTPError(f"invalid Host header: {why}", 400)
        if raw_path[:1] != b"/":
            raw_path, host = _absolute_form(raw_path, method)
            # RFC 9112 §3.2.2: the target's authority replaces any Host field.
            headers = [(k, host if k.lower() == b"host" else v) for k, v in headers]
        upgrade = p.should_upgrade()
        return Request(
            method=method,
            target=target,
            path="",  # filled by the handler (urlpath.normalize) so errors stay 400s there
            query=query,
            version=version,
            headers=headers,
            host=host_only(host) if host else "",
            keep_alive=p.should_keep_alive() and not upgrade,
            content_length=f.content_length,
            chunked=f.chunked,
            upgrade=upgrade,
            client_addr=self._client_addr,
            server_port=self._server_port,
            scheme=self._scheme,
            raw_path=raw_path,
        )


def _check_version(version: str, f: Fields) -> None:
    if version != "1.0":
        # HTTP/0.9 has no headers to frame a body or carry Host; 2.x is not spoken here.
        raise HTTPError(f"HTTP/{version} is not supported", 400 if version < "1" else 505)
    if f.codings:
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        raise HTTPError("Transfer-Encoding in an HTTP/1.0 request", 400)


def _absolute_form(raw_path: bytes, method: str) -> tuple[bytes, bytes]:
    """Accept ``http://host/path`` targets (RFC 9112 §3.2.2); refuse the rest."""
    if method == "CONNECT":
        raise HTTPError("CONNECT is not supported by a reverse proxy", 405)
    lower = raw_path[:8].lower()
    if lower.startswith((b"http://", b"https://")):
        rest = raw_path.split(b"://", 1)[1]
        host, slash, path = rest.partition(b"/")
        if why := authority_error(host):  # userinfo ("@") included: never forwarded
            raise HTTPError(f"absolute-form target without a usable host: {why}", 400)
        return slash + path if slash else b"/", host
    raise HTTPError("request target must be an absolute path", 400)


class ResponseReader(Reader):
    """Parses one upstream response (plus any 1xx before it).

    llhttp cannot be told that a response to HEAD has no body, so for HEAD we
    stop at the head ourselves. Bytes beyond the end of the response set
    ``leftover``: such a connection is never reused, so they can never become
    the next client's response. A reader whose parser saw its response through
    to the end is ``reusable`` for the next response on the same connection
    (``reset``), which saves making a parser per proxied request.
    """

    def __init__(self, header_limit: int, head_request: bool = False, *,
                 fast: bool = True) -> None:
        """``fast``: a whole small response in one read takes the fast lane (``h1fast``)."""
        super().__init__(header_limit, 502)
        self._parser = httptools.HttpResponseParser(self)
        self._fast_max = header_limit // 2 if fast else 0
        self.reset(head_request)

    def reset(self, head_request: bool = False) -> None:
        """Ready for the next response on the connection; only after ``reusable()``."""
        self._head_request = head_request
        self._fresh = not head_request  # llhttp stands at a new response: the lane may take it
        self._left = 0  # body bytes still to come after a head the lane read
        self._info = False
        self._reason = b""
        self._quiet = 0
        self.final: Response | None = None  # set by the proxy when it sends the head
        self.done = False
        self.complete = False  # llhttp itself reached the end of the final response
        self.head_seen = False
        self.leftover = False

    def reusable(self) -> bool:
        """Whether llhttp stands at the start of the next response, as a new parser would.

        Not after a response to HEAD whose head announced a body (llhttp would
        wait for it), a body relayed raw by the proxy, or bytes after the end.
        """
        return self.complete and not self.leftover and not self.events

    def on_message_begin(self) -> None:
        self._fresh = False
        if self.done:
            self.leftover = True
        self._fields.reset()
        self._trailers = None
        self._trailer_size = 0
        self._reason = b""
        self.in_head = True

    def on_status(self, reason: bytes) -> None:
        self._ticks += 1
        self._reason += reason
        if len(self._reason) > self._fields.limit:
            raise HTTPError("status line too long", 502)

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.done:
            return
        f = self._fields
        f.finish()
        p = self._parser
        status = p.get_status_code()
        if status < 100:
            raise HTTPError(f"invalid status {status} from upstream", 502)
        resp = Response(status, p.get_http_version(), f.headers, f.content_length, f.chunked,
                        p.should_keep_alive(), status == 101, self._reason)
        if status < 200 and status != 101:
            self._info = True
            self.events.append((INFO, resp))
            return
        self.head_seen = True
        self.events.append((HEAD, resp))
        if self._head_request:
            self._finish()

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.events.append((BODY, body))
        else:
            self.leftover = True

    def on_message_complete(self) -> None:
        if self._info:  # the end of a 1xx: the real response follows
            self._info = False
            return
        # For HEAD, ``done`` came at the head (our doing); llhttp getting here too
        # means the body the head announced was empty, so it is at a new response.
        if not self.done or self._head_request:
            self.complete = True
        self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.events.append((END, self._trailers or []))

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises HTTPError (502) for a response that cannot be relayed."""
        if self._left:
            self._rest_of_body(data)
            return
        if self._fresh and self._take_fast(data):
            return
        ticks, events = self._ticks, len(self.events)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.events.append((UPGRADE, data[exc.args[0]:]))
            return
        except (httptools.HttpParserCallbackError, httptools.HttpParserError) as exc:
            if self.done:
                self.leftover = True  # garbage after a complete response: not reusable
                return
            context = exc.__context__
            raise (context if isinstance(context, HTTPError)
                   else HTTPError(f"invalid upstream response: {exc}", 502)) from None
        if not self.done:
            self._account(len(data), ticks, events)

    def _take_fast(self, data: bytes) -> bool:
        """A plainly valid head framed by Content-Length, read without llhttp; then its body
        is counted here (``_rest_of_body``), and llhttp stays at the start of the next
        response, as after any response it read whole. False: llhttp reads it."""
        end = data.find(b"\r\n\r\n")
        if not 0 < end < self._fast_max:
            return False
        resp = h1fast.fast_response(data[:end + 2])
        if resp is None:
            return False
        self._fresh = False
        self.head_seen = True
        self.events.append((HEAD, resp))
        self._left = resp.content_length
        self._rest_of_body(data[end + 4:])
        return True

    def _rest_of_body(self, data: bytes) -> None:
        left = self._left
        size = len(data)
        if size > left:
            # Bytes after the end: never the next client's response (``leftover``).
            self.leftover = True
            data = data[:left]
            size = left
        if size:
            self._left = left = left - size
            self.events.append((BODY, data))
        if not left:
            self.complete = True
            if not self.done:  # ``_finish`` written out
                self.done = True
                self.events.append((END, self._trailers or []))

    def feed_eof(self) -> None:
        """The upstream closed. Close-delimited bodies end here (RFC 9112 §6.3 item 8)."""
        if self.done:
            return
        if self._left:
            raise HTTPError("upstream closed the connection in the middle of the body", 502)
        f = self._fields
        if not self.head_seen:
            raise HTTPError("upstream closed the connection before answering", 502)
        if f.chunked or f.content_length is not None:
            raise HTTPError("upstream closed the connection in the middle of the body", 502)
        self._finish()
