"""A worker's live state, built once after fork from the frozen config.

Holds what every connection shares inside one worker: listeners and sites,
upstream groups, the connection pool, logs and counters. Created by
``worker.run``; passed explicitly (no module globals) to each connection.

Metrics (``metrics.Recorder``) are counted here, because every request passes
``access`` exactly once; the site and route that answered are noted in
``req.extra`` on the way in (``_CountingListener``, ``forward``, ``wsgi``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.model import Config
from ..config.routing import VirtualHosts
from ..proxy.balancer import UpstreamGroup
from ..proxy.exchange import forward
from ..proxy.headers import TrustedProxies
from ..proxy.upstream import ConnectionPool
from ..shared.metrics import NOT_ROUTED, Layout, Recorder, route_label
from .accesslog import Log
from .site import Listener, Target

if TYPE_CHECKING:
    from ..config.model import Route
    from ..http.request import Request
    from .conn import ClientConn

__all__ = ["Runtime", "Target"]


class _CountingListener(Listener):
    """A Listener that notes which site (instance) answered, for the metrics' labels."""

    def respond(self, conn: ClientConn, req: Request) -> tuple[int, int]:
        site = self.single or self.sites[self.vhosts.select(req.host).index]
        req.extra["site"] = site.instance.index
        return super().respond(conn, req)


class Runtime:
    def __init__(self, config: Config, vhosts: dict[tuple[str, int], VirtualHosts],
                 worker_name: str = "", layout: Layout | None = None) -> None:
        self.config = config
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.pool = ConnectionPool()
        self.log = Log(config.logging, worker_name)
        self.global_group = (UpstreamGroup(config.upstream, config.upstream_balance)
                             if config.upstream else None)
        self.listeners = {addr: _CountingListener(addr, vh, self) for addr, vh in vhosts.items()}
        self.metrics = Recorder(layout or Layout(config))
        self._upstream_rows = self._count_failures()
        self.draining = False
        self.requests = 0
        self.open_connections = 0
        self.connections: set[ClientConn] = set()
        self.tunnels: set = set()
        self._wsgi = None

    # -- responders the sites call ------------------------------------------------
    def forward(self, conn: ClientConn, req: Request, target: Target) -> tuple[int, int]:
        req.extra["route"] = target.route
        return forward(conn, req, target)

    def load_wsgi(self) -> None:
        """Import every WSGI app now, at boot, so a bad import fails the worker's start."""
        from ..wsgi.host import WSGIApps

        self._wsgi = WSGIApps(self)

    def wsgi(self, conn: ClientConn, req: Request, route: Route, strip: int) -> tuple[int, int]:
        req.extra["route"] = route
        return self._wsgi.serve(conn, req, route, strip)

    # -- upstream groups: health sharing and metrics --------------------------------
    def groups(self) -> list[tuple[str, Route | None, UpstreamGroup]]:
        """(site label, route, group) for every balancer of this worker; "-": the global pool."""
        found = []
        for listener in self.listeners.values():
            for site in listener.sites.values():
                routes = {r.index: r for r in site.instance.routes}
                found += [(str(site.instance.index), routes[index], group)
                          for index, group in site.groups.items()]
        if self.global_group is not None:
            found.append((NOT_ROUTED, None, self.global_group))
        return found

    def _count_failures(self) -> list[tuple[UpstreamGroup, dict[str, int]]]:
        """Count each group's failed attempts per upstream; returns (group, key -> row).

        ``UpstreamGroup.failed`` is the one call every failed attempt makes
        (proxy.py); wrapping it on each instance counts failures without the
        proxy knowing about metrics.
        """
        rows = []
        for site, route, group in self.groups():
            label = route_label(route)
            keys = {up.key: self.metrics.layout.upstream_row(site, label, up.key)
                    for up in group.upstreams}
            rows.append((group, keys))
            group.failed = self._counting(group.failed, keys)
        return rows

    def _counting(self, failed, keys: dict[str, int]):
        metrics = self.metrics

        def counted(up) -> bool:
            metrics.upstream_failed(keys[up.key])
            return failed(up)

        return counted

    def upstream_gauges(self) -> None:
        """Copy every balancer's view of its upstreams into the metrics (before publishing)."""
        for group, keys in self._upstream_rows:
            for state in group.state():
                self.metrics.upstream_gauges(keys[state["key"]], state)

    # -- logging ------------------------------------------------------------------
    def access(self, req: Request, status: int, sent: int, duration: float) -> None:
        extra = req.extra
        site = extra.get("site")
        route = route_label(extra["route"]) if "route" in extra else NOT_ROUTED
        self.metrics.request(NOT_ROUTED if site is None else str(site), route, status, sent,
                             duration)
        self.log.access(req, status, sent, duration)

    def access_raw(self, remote: str, status: int) -> None:
        self.log.access_raw(remote, status)

    def log_error(self, message: str) -> None:
        self.log.error(message)
