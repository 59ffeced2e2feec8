"""Forward auth (Traefik's ForwardAuth, nginx's ``auth_request``) as a request-stage rule.

May: send one sub-request per request to the auth service over the worker's upstream
connection pool, read its answer with the upstream response reader, and either let the
request in (2xx, with the listed header fields copied into it) or hand the answer back
as the response (anything else: a login redirect, a 401, a 403 reach the client as
they are). May not: read or send the request's body (the service judges the head).

The sub-request has the original method, the auth URL's path and query, and the
original header fields minus hop-by-hop and forwarding ones, plus what the service
needs to know where the request was going: ``X-Forwarded-Method``, ``-Proto``,
``-Host``, ``-Uri``, ``-For`` (Traefik's names) and ``X-Original-URI`` /
``X-Original-Method`` (nginx's usual ones). A service that cannot be asked (refused,
timed out, a broken answer) is a 500, as nginx answers, and the reason is logged.
"""

from __future__ import annotations

from ..config.model import ForwardAuth, Timeouts
from ..config.schema import parse_auth_url
from ..http.framing import BODY, HEAD, UPGRADE
from ..http.h1read import ResponseReader
from ..http.message import Response
from ..http.request import HTTPError, Request
from ..proxy.headers import (
    FORWARDING,
    HOP_BY_HOP,
    TrustedProxies,
    connection_tokens,
    host_header,
    public_origin,
    response_fields,
)
from ..proxy.upstream import ConnectionPool, UpstreamError
from .clientip import ClientAddress

MAX_ANSWER = 1024 * 1024  # body of a refusal kept in memory to pass on (a login page)
# Not sent to the service: framing and hop-by-hop fields, and what Rex itself says
# about the request (a client must not be able to write those for it).
_NOT_SENT = HOP_BY_HOP | FORWARDING | {
    b"host", b"expect", b"x-forwarded-method", b"x-forwarded-uri", b"x-original-uri",
    b"x-original-method"}


class _Stale(Exception):
    """A pooled connection the service had closed: ask again on a new one."""


class ForwardRule:
    def __init__(self, auth: ForwardAuth, pool: ConnectionPool, client: ClientAddress,
                 trusted: TrustedProxies, timeouts: Timeouts, header_limit: int) -> None:
        self.url = auth.url
        self.up, target = parse_auth_url(auth.url)
        self.target = target.encode()
        self.host = host_header(self.up)
        # lower-cased name -> the spelling the config gave, used in the request
        self.copy = {name.lower().encode(): name.encode() for name in auth.copy_headers}
        self.pool = pool
        self.client = client
        self.trusted = trusted
        self.timeouts = timeouts
        self.header_limit = header_limit

    def __call__(self, req: Request) -> Response | None:
        head = self._head(req)
        try:
            answer, body = self._ask(head, req.method == "HEAD")
        except (UpstreamError, HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            error = HTTPError(f"auth service {self.url}: {reason}", 500)
            error.close = False  # the client's connection is fine
            raise error from None
        if 200 <= answer.status < 300:
            self._let_in(req, answer)
            return None
        return Response(answer.status, response_fields(answer), body, reason=answer.reason)

    def _head(self, req: Request) -> bytes:
        proto, _, host = public_origin(req, self.trusted).partition(b"://")
        method = req.method.encode()
        listed = connection_tokens(req.headers)
        out = [method, b" ", self.target, b" HTTP/1.1\r\nHost: ", self.host, b"\r\n"]
        for name, value in req.headers:
            lname = name.lower()
            if lname not in _NOT_SENT and lname not in listed:
                out += (name, b": ", value, b"\r\n")
        for name, value in ((b"X-Forwarded-Method", method),
                            (b"X-Forwarded-Proto", proto or req.scheme.encode()),
                            (b"X-Forwarded-Host", host),
                            (b"X-Forwarded-Uri", req.target),
                            (b"X-Forwarded-For", self.client(req).encode()),
                            (b"X-Original-URI", req.target),
                            (b"X-Original-Method", method)):
            if value:
                out += (name, b": ", value, b"\r\n")
        if req.method not in ("GET", "HEAD"):
            out.append(b"Content-Length: 0\r\n")  # the body stays with the request
        out.append(b"\r\n")
        return b"".join(out)

    def _ask(self, head: bytes, head_request: bool):
        """(response head, body) of the service; a stale pooled connection is retried once."""
        sock, reused, reader = self.pool.get(self.up, self.timeouts.connect)
        try:
            return self._exchange(sock, reader, reused, head, head_request)
        except _Stale:
            sock, _, _ = self.pool.get(self.up, self.timeouts.connect, fresh=True)
            return self._exchange(sock, None, False, head, head_request)

    def _exchange(self, sock, reader, reused: bool, head: bytes, head_request: bool):
        if reader is None:
            reader = ResponseReader(self.header_limit, head_request)
        else:
            reader.reset(head_request)
        answer, parts, size, received, done = None, [], 0, False, False
        try:
            sock.settimeout(self.timeouts.read)
            sock.sendall(head)
            while not reader.done:
                data = sock.recv(65536)
                if data:
                    received = True
                    reader.feed(data)
                elif reused and not received:
                    raise _Stale
                else:
                    reader.feed_eof()
                while reader.events:
                    kind, payload = reader.events.popleft()
                    if kind == HEAD:
                        answer = payload
                    elif kind == BODY:
                        size += len(payload)
                        if size > MAX_ANSWER:
                            raise UpstreamError(f"its answer's body is over {MAX_ANSWER} bytes")
                        parts.append(payload)
                    elif kind == UPGRADE:
                        raise UpstreamError("it answered with 101 Switching Protocols")
            done = True
        except ConnectionError:  # reset or broken pipe; a timeout is no sign of staleness
            if reused and not received:
                raise _Stale from None
            raise
        finally:
            if done and answer.keep_alive and reader.reusable():
                self.pool.put(self.up, sock, reader)
            else:
                sock.close()
        return answer, b"".join(parts)

    def _let_in(self, req: Request, answer) -> None:
        """The listed fields come from the service only: the client's own copies go."""
        copy = self.copy
        if not copy:
            return
        kept = [(k, v) for k, v in req.headers if k.lower() not in copy]
        kept += ((copy[name.lower()], value) for name, value in answer.headers
                 if name.lower() in copy)
        req.headers[:] = kept
