"""A worker's part in active health checks: probe (worker 1 only) and apply the verdicts.

Worker 1 of each generation runs one greenlet per row of the generation's
``HealthTable``: a probe (``healthcheck.probe`` over gevent sockets, so it
blocks only its own greenlet) every ``interval``, counted by an
``ActiveCheckState`` and written to the table. Every worker, worker 1 too,
reads the table twice per shortest interval and tells its balancers what
changed. May: spawn and kill those greenlets. May not: write the table from
any worker but the prober, or touch request handling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import gevent
import gevent.socket
import gevent.ssl

from ..config.model import Route
from ..shared.sharedhealth import HealthTable
from ..shared.tls import ClientContexts
from .balancer import UpstreamGroup
from .health import ActiveCheckState
from .healthcheck import probe

MIN_PERIOD = 0.05  # seconds: the fastest the verdicts are re-read, whatever the intervals


class HealthSharing:
    def __init__(self, table: HealthTable, groups: Iterable[tuple[Route | None, UpstreamGroup]],
                 prober: bool, log: Callable[[str], None]) -> None:
        self.table = table
        self.prober = prober
        self.log = log
        rows = {(up.conn_key, check): n for n, (up, check) in enumerate(table.targets)}
        # row -> the balancers that take its verdict: those of routes with that check
        self.apply_to: dict[int, list[UpstreamGroup]] = {n: [] for n in rows.values()}
        for route, group in groups:
            if route is not None and route.health_check is not None:
                for up in route.upstreams:
                    self.apply_to[rows[(up.conn_key, route.health_check)]].append(group)
        self.applied: dict[int, bool] = {}
        self.greenlets: list[gevent.Greenlet] = []
        self._tls = ClientContexts(gevent.ssl.SSLContext)  # as the proxy's own: tls: applies

    def start(self) -> None:
        if not self.table.targets:
            return
        self.apply()  # a replacement worker starts from the verdicts already known
        shortest = min(check.interval for _up, check in self.table.targets)
        self.greenlets.append(gevent.spawn(self._apply_loop, max(shortest / 2, MIN_PERIOD)))
        if self.prober:
            self.greenlets += [gevent.spawn(self._probe_loop, row)
                               for row in range(len(self.table.targets))]

    def stop(self) -> None:
        gevent.killall(self.greenlets, block=False)
        self.greenlets = []

    def apply(self) -> None:
        for row, groups in self.apply_to.items():
            up = self.table.up(row)
            if self.applied.get(row) != up:
                self.applied[row] = up
                key = self.table.targets[row][0].key
                for group in groups:
                    group.set_active_health(key, up)

    def _apply_loop(self, period: float) -> None:
        while True:
            gevent.sleep(period)
            self.apply()

    def _probe_loop(self, row: int) -> None:
        upstream, check = self.table.targets[row]
        state = ActiveCheckState(check.fails, check.passes, up=self.table.up(row))
        try:
            context = self._tls.get(upstream.tls) if upstream.scheme == "https" else None
        except OSError as exc:  # SSLError too: a file the config check loaded is gone
            self.log(f"health check {upstream.key}{check.path}: cannot probe: {exc}")
            return
        while True:
            ok = probe(upstream, check, socket_module=gevent.socket, ssl_context=context)
            changed = state.record(ok)
            self.table.record(row, ok, state.up)
            if changed is not None:
                self.log(f"health check {upstream.key}{check.path}: "
                         f"{'up again' if changed else 'down'}")
                self.apply()  # this worker's balancers need not wait for the next look
            gevent.sleep(check.interval)
