"""The active health-check prober: one HTTP/1.1 GET of ``health_check.path``.

Socket code, but blocking and gevent-agnostic: it uses whatever ``socket_module``
it is given (the stdlib ``socket`` by default, ``gevent.socket`` inside a worker
so a probe only blocks its own greenlet) and never imports gevent itself. The
verdict is a bool; counting verdicts into up/down transitions is the pure
``health.ActiveCheckState``'s job, and telling the balancers is the caller's.

Probes are not multiplied by the number of workers: only worker slot 0 runs
them and shares each transition with its siblings (see docs/load-balancing.md).
"""

from __future__ import annotations

import socket
import ssl
import time
from types import ModuleType

from ..config.model import HealthCheck, Upstream
from ..http.h1read import HEAD, ResponseReader
from ..http.request import HTTPError
from .headers import host_header

READ_SIZE = 4096
HEAD_LIMIT = 16 * 1024  # a health endpoint with a bigger head is broken anyway
USER_AGENT = b"rex-health-check"


def request_bytes(upstream: Upstream, check: HealthCheck) -> bytes:
    """The probe request: ``Connection: close`` so the reply ends with the socket."""
    return b"".join((
        b"GET ", check.path.encode("ascii"), b" HTTP/1.1\r\n",
        b"Host: ", host_header(upstream), b"\r\n",
        b"User-Agent: ", USER_AGENT, b"\r\n",
        b"Accept: */*\r\n",
        b"Connection: close\r\n\r\n",
    ))


def probe(upstream: Upstream, check: HealthCheck, socket_module: ModuleType = socket,
          ssl_context: ssl.SSLContext | None = None) -> bool:
    """True when ``upstream`` answers ``check.path`` with 2xx or 3xx within ``check.timeout``.

    ``check.timeout`` bounds the whole probe (connect, TLS, request, response
    head), not each step. Any failure to connect, a reset, a malformed or
    missing response, or a 1xx-only/4xx/5xx status is a failed probe. For
    https upstreams pass an ``ssl_context`` that matches ``socket_module``
    (``shared.tls.client_context(upstream.tls, gevent.ssl.SSLContext)`` with
    ``gevent.socket``); the name checked is ``upstream.tls_name``.
    """
    request = request_bytes(upstream, check)  # a path that is not ASCII is a config bug: raise
    deadline = time.monotonic() + check.timeout
    try:
        sock = socket_module.create_connection((upstream.host, upstream.port),
                                               timeout=check.timeout)
    except OSError:  # refused, unreachable, unresolvable, timed out: all mean "down"
        return False
    try:
        if upstream.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            sock.settimeout(_left(deadline))
            sock = context.wrap_socket(sock, server_hostname=upstream.tls_name)
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        status = _read_status(sock, deadline)
    except (OSError, HTTPError):  # timeouts and TLS errors are OSErrors too
        return False
    finally:
        sock.close()
    # nginx's and HAProxy's default verdict: 2xx and 3xx mean the server works.
    return status is not None and 200 <= status < 400


def _read_status(sock: socket.socket, deadline: float) -> int | None:
    """The final status code (1xx interim responses are skipped by the reader)."""
    reader = ResponseReader(HEAD_LIMIT)
    while True:
        sock.settimeout(_left(deadline))
        data = sock.recv(READ_SIZE)
        if not data:
            return None  # closed before a complete response head
        reader.feed(data)
        for kind, payload in reader.events:
            if kind == HEAD:
                return payload.status
        reader.events.clear()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("health check timed out")
    return left
