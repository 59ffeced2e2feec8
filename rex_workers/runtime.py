"""A worker's live state, built once after fork from the frozen config.

Holds what every connection shares inside one worker: listeners and sites,
upstream groups, the connection pool, logs and counters. Created by
``worker.run``; passed explicitly (no module globals) to each connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .accesslog import Log
from .balancer import UpstreamGroup
from .headers import TrustedProxies
from .model import Config
from .proxy import forward
from .routing import VirtualHosts
from .site import Listener, Target
from .upstream import ConnectionPool

if TYPE_CHECKING:
    from .handler import ClientConn
    from .model import Route
    from .request import Request

__all__ = ["Runtime", "Target"]


class Runtime:
    def __init__(self, config: Config, vhosts: dict[tuple[str, int], VirtualHosts],
                 worker_name: str = "") -> None:
        self.config = config
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.pool = ConnectionPool()
        self.log = Log(config.logging, worker_name)
        self.global_group = (UpstreamGroup(config.upstream, config.upstream_balance)
                             if config.upstream else None)
        self.listeners = {addr: Listener(addr, vh, self) for addr, vh in vhosts.items()}
        self.draining = False
        self.requests = 0
        self.open_connections = 0
        self.connections: set[ClientConn] = set()
        self.tunnels: set = set()
        self._wsgi = None

    # -- responders the sites call ------------------------------------------------
    def forward(self, conn: ClientConn, req: Request, target: Target) -> tuple[int, int]:
        return forward(conn, req, target)

    def load_wsgi(self) -> None:
        """Import every WSGI app now, at boot, so a bad import fails the worker's start."""
        from .wsgi import WSGIApps

        self._wsgi = WSGIApps(self)

    def wsgi(self, conn: ClientConn, req: Request, route: Route, strip: int) -> tuple[int, int]:
        return self._wsgi.serve(conn, req, route, strip)

    # -- logging ------------------------------------------------------------------
    def access(self, req: Request, status: int, sent: int, duration: float) -> None:
        self.log.access(req, status, sent, duration)

    def access_raw(self, remote: str, status: int) -> None:
        self.log.access_raw(remote, status)

    def log_error(self, message: str) -> None:
        self.log.error(message)
