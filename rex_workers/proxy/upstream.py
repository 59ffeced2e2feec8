"""Connections to upstream servers: connect, keep a pool of idle ones, resolve names.

Socket code (gevent). A worker owns one ``ConnectionPool``; connections are
keyed by the upstream's address and TLS options (``Upstream.conn_key``), kept
LIFO (the warmest first) and dropped when idle too long. ``https://``
upstreams are spoken to as their ``tls:`` says (``shared.tls.client_context``).
Names are resolved at connect time and cached briefly, so a restarted
container's new address is picked up (SPEC §5).
"""

from __future__ import annotations

import ipaddress
import math
import socket as _stdsocket
import ssl
import struct
import time

from gevent import socket

from ..config.model import Upstream
from ..http.wire import QUIET, peek
from ..shared.tls import ClientContexts, handshake_problem, tls_problem

DNS_TTL = 5.0
IDLE_TIMEOUT = 55.0  # below the 60 s many servers (gunicorn: 2 s!) use; stale ones are retried
MAX_IDLE_PER_UPSTREAM = 64


def abort(sock: socket.socket) -> None:
    """Close with a reset, not a FIN: the request sent on ``sock`` is incomplete.

    A FIN after part of a body lets a lenient upstream act on the truncated
    request; a RST makes it fail instead. Closing also wakes (with an error) a
    greenlet blocked reading ``sock``.
    """
    try:
        sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass  # already closed: the reset is moot
    sock.close()


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def send_problem(sock: socket.socket, exc: OSError) -> str:
    """Why sending on an upstream connection failed.

    A TLS upstream that refuses Rex's client certificate (TLS 1.3) sends its
    alert and closes after the handshake: the send only sees the close, while
    the alert waits unread. Reading it says what to fix.
    """
    if isinstance(exc, ssl.SSLError):  # so ``sock`` speaks TLS (gevent's SSLSocket)
        sock.settimeout(0.0)  # an alert came before the close the send saw: never wait
        try:
            sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            pass  # nothing came: the send's own error says it
        except ssl.SSLError as alert:
            return tls_problem(alert)
        except OSError:
            pass  # a reset, say: the send's own error says it
    return tls_problem(exc)


class UpstreamError(Exception):
    """Could not reach or talk to the upstream; ``status`` is what the client gets."""

    def __init__(self, reason: str, status: int = 502, *, sent: bool = False,
                 retry: bool = True, stale: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.sent = sent  # bytes of the request may have reached the upstream
        self.retry = retry  # another upstream may be tried (not after a read timeout)
        self.stale = stale  # failed before any answer: a pooled connection had died


class Resolver:
    """getaddrinfo with a short cache; literal IPs skip it entirely.

    ``lookup`` and ``clock`` are injectable so the caching rule is tested
    without a DNS server or sleeping.
    """

    def __init__(self, ttl: float = DNS_TTL, lookup=None, clock=time.monotonic) -> None:
        self._ttl = ttl
        self._lookup = lookup or _getaddrinfo
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, list]] = {}

    def resolve(self, host: str, port: int) -> list:
        """getaddrinfo-style entries for ``host:port``; OSError when it cannot resolve."""
        key = (host, port)
        hit = self._cache.get(key)
        now = self._clock()
        if hit and hit[0] > now:
            return hit[1]
        infos = _literal(host, port)
        # A literal address never changes; a name is asked again after the TTL,
        # so a restarted container's new address is picked up (SPEC §5).
        expires = math.inf if infos else now + self._ttl
        if infos is None:
            infos = self._lookup(host, port)
        self._cache[key] = (expires, infos)
        return infos


def _getaddrinfo(host: str, port: int) -> list:
    return socket.getaddrinfo(host, port, 0, _stdsocket.SOCK_STREAM)


def _literal(host: str, port: int) -> list | None:
    """getaddrinfo's answer for an IP literal, without a resolver round trip."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    family = _stdsocket.AF_INET6 if ":" in host else _stdsocket.AF_INET
    addr = (host, port, 0, 0) if family == _stdsocket.AF_INET6 else (host, port)
    return [(family, _stdsocket.SOCK_STREAM, _stdsocket.IPPROTO_TCP, "", addr)]


class ConnectionPool:
    """Idle keep-alive connections per upstream, each with what its user keeps beside it.

    The proxy keeps the connection's response reader there (``state``), as an
    HTTP client keeps one parser per connection; the pool only hands it back.
    """

    def __init__(self, resolver: Resolver | None = None) -> None:
        self._idle: dict[tuple, list[tuple[float, socket.socket, object]]] = {}
        self._resolver = resolver or Resolver()
        self._tls: ClientContexts | None = None  # made when an https upstream is first used

    def get(self, up: Upstream, connect_timeout: float, *, fresh: bool = False,
            now: float | None = None):
        """``(socket, reused, state)``: an idle pooled connection (``reused`` True)
        with the state ``put`` beside it, or a new connection (state None).

        A pooled socket is peeked at first (one non-blocking syscall): one the
        upstream closed is dropped, and one holding bytes nobody asked for (sent
        after the last response ended) is never read as the next response.
        ``fresh``: always connect (the retry after a stale pooled connection).
        ``now``: the caller's clock reading, when it has one from just before.
        """
        key = up.conn_key
        idle = self._idle[key] if not fresh and key in self._idle else None
        if idle and now is None:
            now = time.monotonic()
        while idle:
            since, sock, state = idle.pop()
            # EOF, or bytes nobody asked for: either way the connection is unusable,
            # and stray bytes must never be read as the next response.
            if now - since > IDLE_TIMEOUT or peek(sock) != QUIET:
                sock.close()
                continue
            return sock, True, state
        return self.connect(up, connect_timeout), False, None

    def put(self, up: Upstream, sock: socket.socket, state: object = None,
            now: float | None = None) -> None:
        """Pool ``sock`` (with ``state``); ``now``: the caller's clock reading, if it has one."""
        key = up.conn_key
        idle = self._idle[key] if key in self._idle else self._idle.setdefault(key, [])
        if len(idle) >= MAX_IDLE_PER_UPSTREAM:
            idle.pop(0)[1].close()
        idle += ((time.monotonic() if now is None else now, sock, state),)

    def connect(self, up: Upstream, timeout: float) -> socket.socket:
        try:
            infos = self._resolver.resolve(up.host, up.port)
        except OSError as exc:
            raise UpstreamError(f"cannot resolve {up.host}: {exc}") from None
        last: Exception | None = None
        for family, kind, proto, _name, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            try:
                sock.connect(addr)
            except TimeoutError:
                sock.close()
                raise UpstreamError(f"connect to {up.key} timed out", 504) from None
            except OSError as exc:
                sock.close()
                last = exc
                continue
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
            if up.scheme == "https":
                sock = self._wrap_tls(sock, up)
            return sock
        reason = getattr(last, "strerror", None) or str(last)
        raise UpstreamError(f"connect to {up.key} failed: {reason}")

    def _wrap_tls(self, sock: socket.socket, up: Upstream) -> socket.socket:
        if self._tls is None:
            from gevent import ssl as gssl  # its sockets wait for the handshake in the hub

            self._tls = ClientContexts(gssl.SSLContext)
        try:
            context = self._tls.get(up.tls)
            # An IP address is never sent by SNI (RFC 6066 §3), but is still verified.
            return context.wrap_socket(sock, server_hostname=up.tls_name)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            status = 504 if isinstance(exc, TimeoutError) else 502
            raise UpstreamError(f"TLS handshake failed: {handshake_problem(exc, up.tls_name)}",
                                status) from None

    def close(self) -> None:
        for idle in self._idle.values():
            for _since, sock, _state in idle:
                sock.close()
        self._idle.clear()
