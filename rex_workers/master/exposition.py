"""The master's view of its workers' metrics: totals by labels, Prometheus text, status rows.

Pure: the master hands in what it read from shared memory (``metrics.Layout``
plus one array per worker) and its own numbers; this module adds them up by
label and formats them. May not: read shared memory, touch sockets, import
gevent. Counters are summed over live workers plus ``Retired`` (what exited
workers had counted), so they only ever grow, across restarts and reloads;
gauges come from the workers serving the current config.

Text format: Prometheus exposition format 0.0.4 (one ``# HELP`` and ``# TYPE``
per family, samples of a family together, histograms as cumulative
``_bucket{le=...}`` plus ``_sum`` and ``_count``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..shared.metrics import (
    BODY_BYTES,
    BUCKETS,
    BUFFERING,
    GAUGES,
    HIST,
    LISTENER_WIDTH,
    PROTOCOL,
    PROTOCOLS,
    REQUEST_WIDTH,
    STATUS_LABELS,
    SUM,
    Layout,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]

FAMILIES: dict[str, tuple[str, str]] = {
    "rex_requests_total": ("counter", "Requests answered, by site (instance index), route and "
                                      "status code; route \"-\": static files, pages, errors."),
    "rex_requests_by_protocol_total": ("counter", "Requests answered, by site, route and the "
                                                  "protocol they came over (HTTP/1.x, HTTP/2)."),
    "rex_request_duration_seconds": ("histogram", "Time from request head to last byte sent."),
    "rex_response_body_bytes_total": ("counter", "Response body bytes sent to clients."),
    "rex_connections_total": ("counter", "Client connections accepted, by listener."),
    "rex_tls_handshake_failures_total": ("counter", "TLS handshakes that failed or timed out."),
    "rex_received_bytes_total": ("counter", "Bytes received from clients on the wire."),
    "rex_sent_bytes_total": ("counter", "Bytes sent to clients on the wire."),
    "rex_open_connections": ("gauge", "Client connections open now, all workers."),
    "rex_upstream_failures_total": ("counter", "Failed attempts to get a response from an "
                                               "upstream (refused, reset, timed out)."),
    "rex_spooled_bytes_total": ("counter", "Bytes of proxied bodies buffered in temp files, "
                                           "by direction (request, response)."),
    "rex_spooled_total": ("counter", "Request bodies and responses that were buffered in "
                                     "temp files, by direction."),
    "rex_buffered_bytes": ("gauge", "Bytes of proxied bodies held now, by worker and where "
                                    "(memory, disk)."),
    "rex_upstream_up": ("gauge", "Share of the serving workers that send traffic to the "
                                 "upstream now (passive and active health agree)."),
    "rex_upstream_in_flight": ("gauge", "Requests in flight to the upstream, all workers."),
    "rex_upstream_active_up": ("gauge", "The active health check's verdict (1 up, 0 down)."),
    "rex_health_probes_total": ("counter", "Active health-check probes sent."),
    "rex_workers": ("gauge", "Worker processes, by state."),
    "rex_worker_restarts_total": ("counter", "Workers that died or were killed and replaced."),
    "rex_reloads_total": ("counter", "Config reloads, by result."),
    "rex_generation": ("gauge", "Number of the generation serving the current config."),
    "rex_ready": ("gauge", "1 while the master serves and accepts (what /ready says)."),
    "rex_start_time_seconds": ("gauge", "When the master started, in Unix time."),
    "rex_site_info": ("gauge", "What each site label stands for."),
    "rex_config_info": ("gauge", "The config being served."),
    "rex_build_info": ("gauge", "The running version of Rex."),
    # The process collector's families, named and meant as Prometheus' client libraries
    # export them (procstat.py); labelled by process: the master, or worker N of generation G.
    "process_cpu_seconds_total": ("counter", "Total user and system CPU time spent in seconds."),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_virtual_memory_bytes": ("gauge", "Virtual memory size in bytes."),
    "process_open_fds": ("gauge", "Number of open file descriptors."),
    "process_max_fds": ("gauge", "Maximum number of open file descriptors."),
    "process_start_time_seconds": ("gauge", "Start time of the process since unix epoch in "
                                            "seconds."),
}
_BOUNDS = (*(f"{b:g}" for b in BUCKETS), "+Inf")
_LISTENER_COUNTERS = ("rex_connections_total", "rex_tls_handshake_failures_total",
                      "rex_received_bytes_total", "rex_sent_bytes_total")


def counters(layout: Layout, values) -> Iterator[tuple[Key, float]]:
    """Every non-zero counter of one worker's array, keyed by family and labels."""
    for row, (site, route) in enumerate(layout.requests):
        base = row * REQUEST_WIDTH
        where = (("site", site), ("route", route))
        for column, code in enumerate(STATUS_LABELS):
            yield ("rex_requests_total", (*where, ("code", code))), values[base + column]
        for n, bound in enumerate(_BOUNDS):
            yield ("rex_request_duration_seconds_bucket", (*where, ("le", bound))), \
                values[base + HIST + n]
        yield ("rex_request_duration_seconds_sum", where), values[base + SUM]
        yield ("rex_response_body_bytes_total", where), values[base + BODY_BYTES]
        for n, protocol in enumerate(PROTOCOLS):
            yield ("rex_requests_by_protocol_total", (*where, ("protocol", protocol))), \
                values[base + PROTOCOL + n]
    for row, (host, port) in enumerate(layout.listeners):
        base = layout.listener_base + row * LISTENER_WIDTH
        where = (("listener", f"{host}:{port}"),)
        for column, name in enumerate(_LISTENER_COUNTERS):
            yield (name, where), values[base + column]
    for row, up in enumerate(layout.upstreams):
        where = (("site", up.site), ("route", up.route), ("upstream", up.upstream.key))
        yield ("rex_upstream_failures_total", where), values[layout.failure_base + row]
    base = layout.buffering_base
    for n, direction in enumerate(("request", "response")):
        where = (("direction", direction),)
        yield ("rex_spooled_bytes_total", where), values[base + n]
        yield ("rex_spooled_total", where), values[base + 2 + n]


def buffered(layout: Layout, values) -> tuple[float, float]:
    """(bytes in memory, bytes on disk) one worker holds for proxied bodies now."""
    base = layout.buffering_base + BUFFERING.index("memory_bytes")
    return values[base], values[base + 1]


@dataclass
class Retired:
    """Counters of workers that have exited; the master folds each one in when it reaps it."""

    totals: dict[Key, float] = field(default_factory=lambda: defaultdict(float))

    def fold(self, layout: Layout, values) -> None:
        for key, value in counters(layout, values):
            if value:
                self.totals[key] += value


def sum_counters(retired: Retired, live: Iterable[tuple[Layout, object]]) -> dict[Key, float]:
    totals: dict[Key, float] = defaultdict(float, retired.totals)
    for layout, values in live:
        for key, value in counters(layout, values):
            if value:
                totals[key] += value
    return totals


def upstream_states(layout: Layout, values) -> list[dict]:
    """One worker's balancer view of every upstream (the fields of UpstreamGroup.state)."""
    rows = []
    for row, up in enumerate(layout.upstreams):
        base = layout.gauge_base + row * len(GAUGES)
        gauges = dict(zip(GAUGES, values[base:base + len(GAUGES)], strict=True))
        rows.append({
            "site": up.site, "route": up.route, "key": up.upstream.key, "url": up.upstream.url,
            "up": bool(gauges["up"]), "active_up": bool(gauges["active_up"]),
            "fails": int(gauges["fails"]), "down_for": round(gauges["down_for"], 3),
            "conns": int(gauges["conns"]), "weight": up.upstream.weight,
            "backup": up.upstream.backup,
        })
    return rows


def upstream_summary(layout: Layout, serving: list, totals: dict[Key, float],
                     health: dict[tuple, dict]) -> list[dict]:
    """Per upstream of the current config: how many serving workers use it, failures, probes.

    ``serving`` holds the arrays of the current generation's serving workers;
    ``health`` the rows of its health table (``HealthTable.read``) by (upstream
    ``conn_key``, check). A row shows the probe of its own route's check only: a
    route without one shows none, whatever another route probes on the same upstream.
    """
    views = [upstream_states(layout, values) for values in serving]
    summary = []
    for row, up in enumerate(layout.upstreams):
        where = (("site", up.site), ("route", up.route), ("upstream", up.upstream.key))
        states = [view[row] for view in views]
        summary.append({
            "site": up.site, "route": up.route, "key": up.upstream.key, "url": up.upstream.url,
            "up_in": sum(s["up"] for s in states), "workers": len(states),
            "fails": sum(s["fails"] for s in states), "conns": sum(s["conns"] for s in states),
            "failures": int(totals.get(("rex_upstream_failures_total", where), 0)),
            "health_check": (health.get((up.upstream.conn_key, up.check))
                             if up.check is not None else None),
        })
    return summary


# ------------------------------------------------------------------ text format


@dataclass
class Exposition:
    """Samples by family, in the order families are declared; ``text()`` renders them."""

    samples: dict[str, list[tuple[str, Labels, float]]] = field(
        default_factory=lambda: defaultdict(list))

    def add(self, family: str, value: float, labels: Labels = (), suffix: str = "") -> None:
        self.samples[family].append((family + suffix, labels, value))

    def add_counters(self, totals: dict[Key, float]) -> None:
        family = "rex_request_duration_seconds"
        buckets: dict[Labels, list[float]] = defaultdict(lambda: [0.0] * len(_BOUNDS))
        sums: dict[Labels, float] = defaultdict(float)
        for (name, labels), value in sorted(totals.items()):
            if name == f"{family}_bucket":
                buckets[labels[:-1]][_BOUNDS.index(labels[-1][1])] += value
            elif name == f"{family}_sum":
                sums[labels] += value
            else:
                self.add(name, value, labels)
        for labels, counts in sorted(buckets.items()):
            running = 0.0
            for bound, count in zip(_BOUNDS, counts, strict=True):
                running += count
                self.add(family, running, (*labels, ("le", bound)), "_bucket")
            self.add(family, sums[labels], labels, "_sum")
            self.add(family, running, labels, "_count")

    def text(self) -> str:
        lines = []
        for family, (kind, text) in FAMILIES.items():
            samples = self.samples.get(family)
            if not samples:
                continue
            lines += [f"# HELP {family} {text}", f"# TYPE {family} {kind}"]
            lines += [f"{name}{_labels(labels)} {_number(value)}"
                      for name, labels, value in samples]
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
