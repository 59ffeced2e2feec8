"""The WebSocket tunnel: after a 101, bytes both ways until either side closes.

Socket code. Runs in the client connection's greenlet plus one more for the
upstream-to-client direction; both are plain byte pumps, so each side's
backpressure holds. The worker kills open tunnels when it finishes draining.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gevent

from ..http.http1 import UPGRADE
from ..http.wire import send_all
from ..proxy import headers
from ..proxy.upstream import shutdown

if TYPE_CHECKING:
    from collections import deque

    from ..http.http1 import Response
    from ..proxy.exchange import Exchange

READ_SIZE = 65536


def tunnel(ex: Exchange, sock, resp: Response, events: deque) -> None:
    """Send the 101 and what followed it, then pump until either side closes."""
    conn = ex.conn
    ex.status = 101
    ex.responded = True
    conn.keep_alive = False
    early = b"".join(p for kind, p in events if kind == UPGRADE)
    events.clear()
    conn.send(headers.response_head(resp) + early)
    client_early = conn.take_upgrade_data()
    if client_early:
        send_all(sock, client_early)
    # A WebSocket may be quiet for hours; it ends when either side closes.
    sock.settimeout(None)
    conn.sock.settimeout(None)
    other = gevent.spawn(pump, sock, conn.sock)
    conn.rt.tunnels.add(other)
    try:
        pump(conn.sock, sock)
        other.join()
    finally:
        conn.rt.tunnels.discard(other)
        other.kill(block=False)


def pump(src, dst) -> None:
    """Copy ``src`` to ``dst`` until either fails or closes."""
    try:
        while data := src.recv(READ_SIZE):
            send_all(dst, data)
    except OSError:
        pass  # either side went away: the tunnel is over, nothing to report
    finally:
        # Ends the other direction too: a tunnel is over when either side is.
        shutdown(dst)
