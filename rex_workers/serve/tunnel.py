"""The byte tunnel after a 101: both directions until either side closes.

Socket code. Runs in the client connection's greenlet plus one more for the
upstream-to-client direction; both are plain byte pumps, so each side's
backpressure holds. The worker kills open tunnels when it finishes draining.
May not: parse anything or decide whether a tunnel is allowed (the proxy has
checked the 101, the connection the Upgrade request).
"""

from __future__ import annotations

import gevent

from ..http.wire import READ_SIZE, send_all, shutdown


def tunnel(client, peer, tunnels: set) -> None:
    """Pump ``client`` <-> ``peer`` until either side closes; registered in ``tunnels``."""
    # A WebSocket may be quiet for hours; it ends when either side closes.
    peer.settimeout(None)
    client.settimeout(None)
    other = gevent.spawn(pump, peer, client)
    tunnels.add(other)
    try:
        pump(client, peer)
        other.join()
    finally:
        tunnels.discard(other)
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
