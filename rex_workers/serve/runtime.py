"""A worker's live state, built once after fork from the frozen config.

Holds what every connection shares inside one worker: listeners and sites, the
proxy (upstream groups and the connection pool), the WSGI apps, logs and
counters. Created by ``worker``; passed explicitly (no module globals) to each
connection, which knows it as its context (``ClientConn.ctx``).

Metrics (``shared.metrics.Recorder``) are counted here: every request passes
``access`` exactly once with its ``Outcome``, and every failed upstream attempt
reaches ``_failed_attempt`` through the callback its group was built with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import gevent

from ..access.guard import Access
from ..config.model import Config, Instance, Route, Upstream
from ..config.routing import RouteTable, VirtualHosts
from ..http import h1fast
from ..http.message import Outcome
from ..http.request import Request
from ..proxy.balancer import UpstreamGroup
from ..proxy.exchange import Proxy
from ..proxy.headers import TrustedProxies
from ..proxy.relay import Buffers
from ..proxy.state import Target
from ..proxy.upstream import ConnectionPool
from ..shared.metrics import NOT_ROUTED, Layout, Recorder, Shared, route_label
from .accesslog import Log
from .site import Listener, Site


class Runtime:
    def __init__(self, config: Config, vhosts: dict[tuple[str, int], VirtualHosts],
                 worker_name: str = "", layout: Layout | None = None,
                 shared: Shared | None = None) -> None:
        self.config = config
        self.limits = limits = config.limits
        # The size of a head the fast lane may take, from the limits (``h1fast.bounds``).
        self.fast_bounds = h1fast.bounds(limits.header_bytes, limits.request_line_bytes,
                                         limits.header_fields, limits.field_bytes)
        self.timeouts = config.timeouts
        self.trusted = TrustedProxies(config.trusted_proxies)
        # Request ids: this worker's random prefix, then a counter (``ClientConn._handle``).
        self.id_prefix = os.urandom(6).hex().encode() + b"-"
        self.serial = 0
        self.trust_ids = bool(config.trusted_proxies)  # whether a forwarded id may be kept
        self.pool = ConnectionPool()
        self.log = Log(config.logging, worker_name)
        self.metrics = Recorder(layout or Layout(config))
        self.buffers = Buffers(config.buffering)
        self.proxy = Proxy(self.pool, self.trusted, config.limits.header_bytes, self.buffers)
        self.guards = Access(self.trusted, self.pool, config.timeouts, config.limits.header_bytes,
                             self.log_error)
        # (site label, route, group, upstream key -> metrics row) of every balancer.
        self._groups: list[tuple[str, Route | None, UpstreamGroup, dict[str, int]]] = []
        self.wsgi = None
        if config.has_wsgi:
            from ..wsgi.host import WSGIApps

            # Imported now, at boot, so a bad import fails the worker's start.
            self.wsgi = WSGIApps(config, self.trusted.__contains__)
        self._guarding = None
        if any(inst.limited for inst in config.instances):
            self._guarding = self._limits(shared)
        self.global_target = None
        if config.upstream:
            group = self._group(config.upstream, config.upstream_balance, site=NOT_ROUTED,
                                route=None)
            self.global_target = Target(group, None, 0, config.timeouts)
        self.listeners = {addr: Listener(addr, vh, self._site) for addr, vh in vhosts.items()}
        self.draining = False  # stopping now: every connection ends after its response
        self.drain_began = False  # a request that starts now is its connection's last
        self.requests = 0
        self.open_connections = 0
        self.connections: set = set()
        self.lot = None  # serve.park.Lot: idle connections parked (set by the worker)
        self.tunnels: set = set()

    def _site(self, instance: Instance, table: RouteTable) -> Site:
        site = Site(instance, table, self.proxy, self.global_target, self.wsgi, self._group,
                    self.guards.guard)
        if instance.limited:  # a site without limits runs nothing for them per request
            from ..limits.guard import Guard

            store, inflight, slot, client_ip = self._guarding
            site.respond = Guard(instance, table, store, inflight, slot, client_ip,
                                 site.respond).respond
        return site

    def _limits(self, shared: Shared | None) -> tuple:
        """The store, in-flight table, slot and client address the sites' guards share.

        Without the master's tables (a worker built in-process) the limits are this
        process's own."""
        from ..limits.guard import client_ip
        from ..limits.store import make_store
        from ..shared.ratetable import InFlightTable, LimitTables, RateTable

        tables, slot = (shared.limits, shared.slot) if shared and shared.limits else (None, 0)
        if tables is None:
            tables = LimitTables(RateTable(), InFlightTable(self.config, 1))
        # A yield while another worker holds a budget's lock: this one serves meanwhile.
        store = make_store(self.config.rate_limits, tables.rates, self.log.error,
                           partial(gevent.sleep, 0))
        return store, tables.inflight, slot, client_ip(self.trusted.__contains__)

    def _group(self, upstreams: Sequence[Upstream], balance: str, *, site: str,
               route: Route | None) -> UpstreamGroup:
        """A balancer whose failed attempts are counted in this worker's metrics."""
        label = route_label(route)
        rows = {up.key: self.metrics.layout.upstream_row(site, label, up.key) for up in upstreams}
        failed = self.metrics.upstream_failed
        group = UpstreamGroup(upstreams, balance, on_failure=lambda up: failed(rows[up.key]))
        self._groups.append((site, route, group, rows))
        return group

    # -- upstream groups: health sharing and metrics --------------------------------
    def groups(self) -> list[tuple[str, Route | None, UpstreamGroup]]:
        """(site label, route, group) for every balancer of this worker; "-": the global pool."""
        return [(site, route, group) for site, route, group, _rows in self._groups]

    def gauges(self) -> None:
        """Copy what is kept outside the metrics into them (before publishing): every
        balancer's view of its upstreams, and the buffering figures."""
        for _site, _route, group, rows in self._groups:
            for state in group.state():
                self.metrics.upstream_gauges(rows[state["key"]], state)
        budget = self.buffers.budget
        self.metrics.buffering(budget.spilled_bytes, budget.spilled_bodies, budget.memory,
                               budget.disk)

    # -- logging ------------------------------------------------------------------
    def access(self, req: Request, outcome: Outcome, duration: float) -> None:
        site, route = outcome.site, outcome.route
        self.metrics.request(NOT_ROUTED if site is None else str(site),
                             NOT_ROUTED if route is None else route,
                             outcome.status, outcome.sent, duration, req.version == "2.0")
        log = self.log
        if log.writes_access:  # off: not even the call
            log.access(req, outcome, duration)

    def access_raw(self, remote: str, status: int) -> None:
        self.log.access_raw(remote, status)

    def log_error(self, message: str) -> None:
        self.log.error(message)
