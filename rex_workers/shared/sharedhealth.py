"""Active health verdicts shared by one generation's workers: one prober, every balancer.

The master maps one table per generation before forking its workers, a row per
distinct (upstream, health check) of ``metrics.probe_targets``. Worker 1 of
the generation probes and writes the rows; every worker reads them and applies
changes to its own balancers (``prober.py``); the master reads them for
``/status`` and ``/metrics``. So probes are not multiplied by the number of
workers, and every worker agrees on what is down.

May: map, write and read the table. May not: probe, import gevent, know about
balancers. One writer per table; a reader sees each row's state whole (it is
one aligned 32-bit word whose values differ in their low byte only).
"""

from __future__ import annotations

import mmap
import struct
import time

from ..config.model import HealthCheck, Upstream

UNKNOWN, UP, DOWN = 0, 1, 2
STATE_NAMES = {UNKNOWN: "unknown", UP: "up", DOWN: "down"}
# state, last probe passed, probes run, (padding), last change, last probe (wall clock)
_ROW = struct.Struct("<iiIidd")

Target = tuple[Upstream, HealthCheck]


class HealthTable:
    def __init__(self, targets: list[Target]) -> None:
        self.targets = list(targets)
        self._map = mmap.mmap(-1, max(len(self.targets) * _ROW.size, 1))

    def state(self, row: int) -> int:
        return _ROW.unpack_from(self._map, row * _ROW.size)[0]

    def up(self, row: int) -> bool:
        """Upstreams start up (health.ActiveCheckState): only a DOWN verdict takes one out."""
        return self.state(row) != DOWN

    def record(self, row: int, ok: bool, up: bool, now: float | None = None) -> None:
        """One probe result and the prober's verdict after it (``ActiveCheckState.up``)."""
        now = time.time() if now is None else now
        state, _last, probes, _pad, changed_at, _checked = _ROW.unpack_from(
            self._map, row * _ROW.size)
        verdict = UP if up else DOWN
        if verdict != state:
            state, changed_at = verdict, now
        _ROW.pack_into(self._map, row * _ROW.size, state, int(ok), probes + 1, 0,
                       changed_at, now)

    def read(self, row: int) -> dict:
        state, last, probes, _pad, changed_at, checked = _ROW.unpack_from(
            self._map, row * _ROW.size)
        up, check = self.targets[row]
        return {"key": up.key, "path": check.path, "state": STATE_NAMES.get(state, "unknown"),
                "last_probe_ok": bool(last) if probes else None, "probes": probes,
                "changed": changed_at or None, "checked": checked or None}

    def inherit(self, old: HealthTable) -> None:
        """Start from the verdicts of the generation being replaced, where the check is the same.

        Without this a reload would bring a dead upstream back "up" until
        ``fails`` probes in a row had failed again.
        """
        rows = {(up.conn_key, check): n for n, (up, check) in enumerate(old.targets)}
        for n, (up, check) in enumerate(self.targets):
            if (up.conn_key, check) in rows:
                start = rows[(up.conn_key, check)] * _ROW.size
                self._map[n * _ROW.size:(n + 1) * _ROW.size] = old._map[start:start + _ROW.size]

    def close(self) -> None:
        self._map.close()
