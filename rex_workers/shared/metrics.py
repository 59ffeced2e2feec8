"""Counters every worker keeps, and the shared-memory table the master sums them from.

May: derive from a config which rows a generation counts (``Layout``), count
requests, connections and upstream outcomes into a flat array of doubles
(``Recorder``), copy that array into the worker's slot of a table the master
maps before forking (``MetricsTable``) and read it back. May not: import
gevent, touch sockets, format anything for people (``exposition.py`` does).

Why this shape: a worker counts in process memory on the hot path (an index
and an add), and copies the whole array into shared memory once per heartbeat
and when it exits; the master reads slots only when asked (``/metrics``,
``/status``). One writer per slot and a sequence number around each copy
(a seqlock: odd while writing) let the master read without locks and never
see half a copy. Counters survive a worker's death: the master folds the
slot's final counters into its own totals when it reaps the worker.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.model import Config, HealthCheck, Route, Upstream

if TYPE_CHECKING:
    from .ratetable import LimitTables
    from .sharedhealth import HealthTable

# Exact codes worth their own series; any other code is counted in its class ("4xx").
STATUS_CODES = (100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401,
                403, 404, 405, 408, 409, 410, 413, 414, 415, 416, 417, 421, 422, 429, 431,
                499, 500, 501, 502, 503, 504, 505)
STATUS_LABELS = (*map(str, STATUS_CODES), "1xx", "2xx", "3xx", "4xx", "5xx", "other")
_STATUS_COLUMN = {code: i for i, code in enumerate(STATUS_CODES)}
_CLASS_COLUMN = len(STATUS_CODES) - 1  # + 1 for "1xx", + 5 for "5xx"
# Seconds; Prometheus client libraries' defaults plus 30 s and 60 s for slow upstreams.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The protocol a request came over (Request.version "2.0" or not), a column each.
PROTOCOLS = ("HTTP/1.x", "HTTP/2")
# One request row: a count per status column, histogram buckets (the last is
# +Inf), the latency sum, response body bytes, a count per protocol.
HIST = len(STATUS_LABELS)
SUM = HIST + len(BUCKETS) + 1
BODY_BYTES = SUM + 1
PROTOCOL = BODY_BYTES + 1
REQUEST_WIDTH = PROTOCOL + len(PROTOCOLS)
# One listener row: connections accepted, failed TLS handshakes, wire bytes in and out.
CONNECTIONS, HANDSHAKE_FAILURES, RECEIVED, SENT = range(4)
LISTENER_WIDTH = 4
# Upstream rows: one counter (failed attempts), then five gauges in a block of their own.
GAUGES = ("up", "active_up", "fails", "conns", "down_for")
# The worker's buffering (proxy/spool.py): counters of what went to disk, by direction,
# then the bytes held now. One block per worker, after the upstream gauges.
BUFFERING = ("request_spooled_bytes", "response_spooled_bytes", "request_spooled",
             "response_spooled", "memory_bytes", "disk_bytes")
NOT_ROUTED = "-"  # static files, pages, redirects, errors: no route answered
GLOBAL_POOL = "upstream"  # the original's global `upstream` list


def status_column(status: int) -> int:
    column = _STATUS_COLUMN.get(status)
    if column is not None:
        return column
    return _CLASS_COLUMN + status // 100 if 100 <= status < 600 else len(STATUS_LABELS) - 1


def route_label(route: Route | None) -> str:
    return GLOBAL_POOL if route is None else route.path


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    site: str  # instance index, or "-" for the global pool
    route: str
    upstream: Upstream
    # The route's own active check: the one probe whose verdict this row shows. Another
    # route's check of the same upstream says nothing about this route's traffic.
    check: HealthCheck | None = None


class Layout:
    """Which row counts what, for one config; master and workers build the same one.

    Rows are keyed by labels, not by position in the file, so two routes with
    the same path in one instance share a row (their series would collide).
    """

    def __init__(self, config: Config) -> None:
        self.requests: list[tuple[str, str]] = [(NOT_ROUTED, NOT_ROUTED)]  # unknown site first
        # (site, route) -> row; ``Recorder.request`` reads it per request.
        self.request_rows: dict[tuple[str, str], int] = {(NOT_ROUTED, NOT_ROUTED): 0}
        self.upstreams: list[UpstreamRow] = []
        self._upstream_rows: dict[tuple[str, str, str], int] = {}
        for inst in config.instances:
            site = str(inst.index)
            labels = [NOT_ROUTED, *(r.path for r in inst.routes)]
            labels += [GLOBAL_POOL] if config.upstream else []
            for key in [(site, label) for label in labels]:
                if key not in self.request_rows:
                    self.request_rows[key] = len(self.requests)
                    self.requests.append(key)
            for route in inst.routes:
                for up in route.upstreams:
                    self._add_upstream(site, route.path, up, route.health_check)
        for up in config.upstream:
            self._add_upstream(NOT_ROUTED, GLOBAL_POOL, up)
        self.listeners = sorted({i.address for i in config.instances})
        self._listener_rows = {address: n for n, address in enumerate(self.listeners)}
        self.listener_base = len(self.requests) * REQUEST_WIDTH
        self.failure_base = self.listener_base + len(self.listeners) * LISTENER_WIDTH
        self.gauge_base = self.failure_base + len(self.upstreams)  # counters end here
        self.buffering_base = self.gauge_base + len(self.upstreams) * len(GAUGES)
        self.size = self.buffering_base + len(BUFFERING)

    def _add_upstream(self, site: str, route: str, up: Upstream,
                      check: HealthCheck | None = None) -> None:
        if (site, route, up.key) not in self._upstream_rows:
            self._upstream_rows[(site, route, up.key)] = len(self.upstreams)
            self.upstreams.append(UpstreamRow(site, route, up, check))

    def request_row(self, site: str, route: str) -> int:
        return self.request_rows.get((site, route), 0)

    def listener_row(self, address: tuple[str, int]) -> int:
        return self._listener_rows[address]

    def upstream_row(self, site: str, route: str, key: str) -> int:
        return self._upstream_rows[(site, route, key)]


def probe_targets(config: Config) -> list[tuple[Upstream, HealthCheck]]:
    """Every distinct (upstream, health check): one prober and one shared verdict each."""
    seen: dict[tuple[tuple, HealthCheck], Upstream] = {}
    for inst in config.instances:
        for route in inst.routes:
            if route.health_check is not None:
                for up in route.upstreams:
                    # conn_key: an https upstream is probed as its route's tls: says
                    seen.setdefault((up.conn_key, route.health_check), up)
    return [(up, check) for (_key, check), up in seen.items()]


class Recorder:
    """A worker's counters, in process memory; ``values`` is what gets published."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.values = array("d", bytes(8 * layout.size))

    def request(self, site: str, route: str, status: int, sent: int, duration: float,
                h2: bool = False) -> None:
        # ``Layout.request_row`` and ``status_column`` written out: this runs per request,
        # and a look-up with ``in`` is no call.
        rows, key = self.layout.request_rows, (site, route)
        base = (rows[key] if key in rows else 0) * REQUEST_WIDTH  # noqa: SIM401
        column = _STATUS_COLUMN[status] if status in _STATUS_COLUMN else status_column(status)
        values = self.values
        values[base + column] += 1
        values[base + HIST + bisect_left(BUCKETS, duration)] += 1  # "le": upper bounds count
        values[base + SUM] += duration
        values[base + BODY_BYTES] += sent
        values[base + PROTOCOL + h2] += 1  # a bool indexes: no call on the hot path

    def listener(self, row: int, column: int, amount: float = 1) -> None:
        self.values[self.layout.listener_base + row * LISTENER_WIDTH + column] += amount

    def upstream_failed(self, row: int) -> None:
        self.values[self.layout.failure_base + row] += 1

    def buffering(self, spooled_bytes: list[int], spooled: list[int], memory: int,
                  disk: int) -> None:
        """The worker's buffering figures as they are now (counters included: they only grow)."""
        base = self.layout.buffering_base
        self.values[base:base + len(BUFFERING)] = array("d", [*spooled_bytes, *spooled, memory,
                                                               disk])

    def upstream_gauges(self, row: int, state: dict) -> None:
        base = self.layout.gauge_base + row * len(GAUGES)
        for n, name in enumerate(GAUGES):
            self.values[base + n] = float(state[name])


_SEQ = struct.Struct("<Q")
READ_TRIES = 100


class MetricsTable:
    """One generation's slots in shared memory: the master maps it before forking.

    The mapping is anonymous and ``MAP_SHARED``; pages nobody writes cost no
    memory, so a slot per scoreboard slot is cheap however few workers run.
    """

    def __init__(self, layout: Layout, slots: int) -> None:
        self.layout = layout
        self.stride = _SEQ.size + 8 * layout.size
        self._map = mmap.mmap(-1, max(slots * self.stride, 1))

    def reset(self, slot: int) -> None:
        """Zero a slot before its worker is forked (the master's side)."""
        off = slot * self.stride
        self._map[off:off + self.stride] = bytes(self.stride)

    def publish(self, slot: int, values: array) -> None:
        """Copy a worker's counters into its slot (the worker's side, its own slot only)."""
        off = slot * self.stride
        seq = _SEQ.unpack_from(self._map, off)[0]
        _SEQ.pack_into(self._map, off, seq + 1)  # odd: a copy is under way
        self._map[off + _SEQ.size:off + self.stride] = values.tobytes()
        _SEQ.pack_into(self._map, off, seq + 2)

    def read(self, slot: int) -> array:
        """A whole copy of the slot. A worker killed mid-copy leaves it odd: take what is there."""
        off = slot * self.stride
        for _ in range(READ_TRIES):
            before = _SEQ.unpack_from(self._map, off)[0]
            data = self._map[off + _SEQ.size:off + self.stride]
            if before % 2 == 0 and _SEQ.unpack_from(self._map, off)[0] == before:
                break
        values = array("d")
        values.frombytes(data)
        return values

    def close(self) -> None:
        self._map.close()


@dataclass(frozen=True, slots=True)
class Shared:
    """What one worker shares with the master beyond the scoreboard; built before the fork."""

    slot: int  # the worker's scoreboard slot, and its slot in ``metrics``
    metrics: MetricsTable
    health: HealthTable
    limits: LimitTables | None = None  # rate budgets and in-flight counts (ratetable.py)
