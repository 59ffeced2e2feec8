"""From an accepted socket to a served connection: TCP options, the TLS handshake, metering.

Socket code, run in the connection's own greenlet (gevent's StreamServer
spawns one per accepted socket), so a slow or hostile TLS handshake waits in
the hub like any read and blocks nobody else. The handshake gets the
``header`` timeout: a client that connects and says nothing costs one pool
slot for that long, as a silent plain-HTTP client does. A failed handshake
costs exactly its own connection: it is counted and closed, never raised.

May: set socket options, wrap and handshake, count connections and wire bytes
into the worker's metrics. May not: read requests (``handler.ClientConn``
does), bind, or decide anything about routing.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from typing import TYPE_CHECKING

import gevent

from ..shared.metrics import CONNECTIONS, HANDSHAKE_FAILURES, RECEIVED, SENT
from ..shared.tls import PLAIN_HTTP_REPLY, is_plain_http
from .conn import ClientConn
from .h2conn import PREFACE, H2Conn

if TYPE_CHECKING:
    from .runtime import Runtime
    from .site import Listener

_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux only; elsewhere wire bytes stay 0
# struct tcp_info (linux/tcp.h): bytes_acked and bytes_received (since 4.1/4.2), then
# bytes_sent and bytes_retrans (since 4.19). Offsets are the kernel's ABI.
_ACKED_RECEIVED = struct.Struct("<QQ")
_ACKED_AT, _SENT_AT, _SENT_NEEDS = 120, 200, 216


def wire_bytes(sock) -> tuple[int, int]:
    """(received, sent) bytes of a TCP connection so far, TLS records and heads included.

    Sent is what went out once (retransmissions not counted twice) where the
    kernel tells it, else what the client acknowledged.
    """
    if _TCP_INFO is None:
        return 0, 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return 0, 0  # not TCP (tests may use other families), or already closed
    if len(info) < _ACKED_AT + _ACKED_RECEIVED.size:
        return 0, 0  # a kernel older than 4.2
    acked, received = _ACKED_RECEIVED.unpack_from(info, _ACKED_AT)
    if len(info) >= _SENT_NEEDS:
        sent, retransmitted = _ACKED_RECEIVED.unpack_from(info, _SENT_AT)
        return received, sent - retransmitted
    return received, acked


class MeteredConn(ClientConn):
    """A client connection that adds its wire bytes to its listener's row when it closes."""

    __slots__ = ("row",)

    def __init__(self, sock, addr, listener: Listener, rt: Runtime, row: int) -> None:
        super().__init__(sock, addr, listener, rt)
        self.row = row

    def _close(self) -> None:
        _meter(self)
        super()._close()


class MeteredH2(H2Conn):
    """An HTTP/2 connection that adds its wire bytes to its listener's row when it closes."""

    def __init__(self, sock, addr, listener: Listener, rt: Runtime, row: int) -> None:
        super().__init__(sock, addr, listener, rt)
        self.row = row

    def _close(self) -> None:
        _meter(self)
        super()._close()


def _meter(conn: MeteredConn | MeteredH2) -> None:
    """Add a closing connection's wire bytes to its listener's row."""
    received, sent = wire_bytes(conn.sock)
    metrics = conn.ctx.metrics
    metrics.listener(conn.row, RECEIVED, received)
    metrics.listener(conn.row, SENT, sent)


class Entry:
    """The StreamServer handler of one listener: ``Entry(...)(sock, addr)`` per connection."""

    def __init__(self, listener: Listener, rt: Runtime, context: ssl.SSLContext | None) -> None:
        self.listener = listener
        self.rt = rt
        self.context = context
        self.row = rt.metrics.layout.listener_row(listener.address)

    def __call__(self, sock, addr) -> None:
        rt = self.rt
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (tests may use other families): latency tweak only
        rt.metrics.listener(self.row, CONNECTIONS)
        if self.context is not None:
            sock = self._handshake(sock)
            if sock is None:
                return
            h2 = sock.selected_alpn_protocol() == "h2"
        else:
            h2 = self.listener.h2c and _prior_knowledge(sock, rt.timeouts.header)
        if h2:
            conn = MeteredH2(sock, addr, self.listener, rt, self.row)
        else:
            conn = MeteredConn(sock, addr, self.listener, rt, self.row)
        rt.connections.add(conn)
        conn.serve()  # takes itself out of rt.connections when it ends (it may park first)

    def _handshake(self, sock):
        """The TLS socket after a completed handshake, or None (counted, closed)."""
        sock.settimeout(self.rt.timeouts.header)
        try:
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            sock.close()  # the client reset before we could even start
            self.rt.metrics.listener(self.row, HANDSHAKE_FAILURES)
            return None
        try:
            tls.do_handshake()
            return tls
        except (OSError, ValueError) as exc:
            # Timeouts, resets and protocol errors alike: a bad client, never ours to raise.
            self.rt.metrics.listener(self.row, HANDSHAKE_FAILURES)
            if is_plain_http(exc):
                _reply_in_clear(tls)
            tls.close()
            return None


def _prior_knowledge(sock, timeout: float) -> bool:
    """Whether a cleartext client opens with the HTTP/2 preface (h2c, RFC 9113 §3.3).

    Peeked, not read: an HTTP/1.1 request stays in the socket for its parser.
    The preface's first bytes ("PRI * HTTP/2.0") are no valid HTTP/1.1 method
    line Rex would serve, so the first bytes that differ decide.
    """
    give_up = time.monotonic() + timeout
    while True:
        try:
            sock.settimeout(max(0.0, give_up - time.monotonic()))
            head = sock.recv(len(PREFACE), socket.MSG_PEEK)
        except OSError:
            return False  # HTTP/1.1's reader meets the same silence or reset
        if not head or not PREFACE.startswith(head):
            return False
        if len(head) == len(PREFACE):
            return True
        if time.monotonic() >= give_up:
            return False
        gevent.sleep(0.01)  # a preface split across segments: the rest is on its way


def _reply_in_clear(tls) -> None:
    """Tell a client that spoke plain HTTP to this TLS port what went wrong, if it still listens."""
    raw = getattr(tls, "_sock", None)  # gevent's SSLSocket keeps the plain socket here
    if raw is None:
        return
    try:
        raw.send(PLAIN_HTTP_REPLY)  # a few hundred bytes: fits the empty send buffer at once
        raw.shutdown(socket.SHUT_WR)
        # Closing with the rest of its request unread would send a reset that can
        # destroy the reply before the client reads it: drop what has arrived.
        while raw.recv(65536):
            pass
    except OSError:
        pass  # gone, or nothing more to read right now (the raw socket never blocks)
