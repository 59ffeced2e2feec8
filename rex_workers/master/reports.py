"""What the master reports about itself: the status document and the Prometheus text.

``rex status`` (through the status file), the admin ``/status``, ``/metrics``
and ``/ready`` all come from here, so they never disagree. May: read the
master's records, its scoreboard, the generations' shared tables and, for
``/metrics``, what ``/proc`` says of each process (``procstat.py``). May not:
change any of them, signal, fork or import gevent.

``master`` is the Arbiter (rex.py); what is read of it: ``pid``, ``source``,
``started``, ``stopping``, ``generations`` (``generations.py``), ``procs``,
``board``, ``listeners``, ``retired``, ``restarts``, ``version``, ``admin``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..shared.scoreboard import SlotInfo
from . import procstat
from .admin import Answer
from .exposition import (
    CONTENT_TYPE,
    Exposition,
    buffered,
    sum_counters,
    upstream_states,
    upstream_summary,
)
from .supervise import Generation, Proc, urls


@dataclass(frozen=True, slots=True)
class View:
    """One live worker as the master sees it right now."""

    proc: Proc
    gen: Generation
    info: SlotInfo
    values: object  # array('d') of its metrics slot

    @property
    def state(self) -> str:
        return "draining" if self.proc.draining_since else self.info.state_name


def look(master) -> list[View]:
    procs = sorted(master.procs.values(), key=lambda p: (p.generation, p.wid))
    views = []
    for proc in procs:
        gen = master.generations[proc.generation]
        views.append(View(proc, gen, master.board.read(proc.slot), gen.metrics.read(proc.slot)))
    return views


def ready(master) -> bool:
    """Serving and accepting: what ``/ready`` and ``rex_ready`` say (503 while draining)."""
    return bool(master.generations.current.ready and not master.stopping)


def state(master) -> str:
    generations = master.generations
    return ("stopping" if master.stopping else "reloading" if generations.pending
            else "serving" if generations.current.ready else "booting")


def status(master, views: list[View] | None = None) -> dict:
    views = look(master) if views is None else views
    gen, pending = master.generations.current, master.generations.pending
    workers = []
    for v in views:
        workers.append({
            "worker": v.proc.wid, "pid": v.proc.pid, "generation": v.proc.generation,
            "state": v.state, "started": v.info.started, "requests": v.info.requests,
            "connections": v.info.connections,
            "upstreams": upstream_states(v.gen.metrics.layout, v.values)})
    generations = [{"number": g.number, "config": g.config.path, "config_digest": g.config.digest,
                    "workers": sum(1 for v in views if v.gen is g),
                    "role": ("serving" if g is gen else "starting" if g is pending
                             else "draining")}
                   for g in master.generations]
    return {
        "pid": master.pid, "state": state(master), "ready": ready(master),
        "config": gen.config.path, "source": master.source, "config_digest": gen.config.digest,
        "started": master.started, "uptime": time.time() - master.started,
        "generation": gen.number, "generations": generations, "workers_wanted": gen.want,
        "workers": workers, "restarts": master.restarts, "reloads": master.generations.reloads,
        "last_reload": master.generations.last,
        "urls": urls(gen.config), "reuse_port": master.listeners.reuse_port,
        "admin": master.admin and master.admin.url, "version": master.version,
        "upstreams": _upstreams(master, views, _totals(master, views)),
    }


def _totals(master, views: list[View]) -> dict:
    return sum_counters(master.retired, [(v.gen.metrics.layout, v.values) for v in views])


def _upstreams(master, views: list[View], totals: dict) -> list[dict]:
    gen = master.generations.current
    serving = [v.values for v in views if v.gen is gen and v.state == "ready"]
    health = {(up.conn_key, check): gen.health.read(row)
              for row, (up, check) in enumerate(gen.health.targets)}
    return upstream_summary(gen.metrics.layout, serving, totals, health)


def metrics(master) -> str:
    """The Prometheus text of ``/metrics``."""
    views = look(master)
    totals = _totals(master, views)
    out = Exposition()
    out.add_counters(totals)
    out.add("rex_open_connections", sum(v.info.connections for v in views))
    for v in views:
        memory, disk = buffered(v.gen.metrics.layout, v.values)
        worker = (("worker", f"{v.proc.wid}"), ("generation", f"{v.proc.generation}"))
        out.add("rex_buffered_bytes", memory, (*worker, ("where", "memory")))
        out.add("rex_buffered_bytes", disk, (*worker, ("where", "disk")))
    for row in _upstreams(master, views, totals):
        where = (("site", row["site"]), ("route", row["route"]), ("upstream", row["key"]))
        if row["workers"]:
            out.add("rex_upstream_up", row["up_in"] / row["workers"], where)
        out.add("rex_upstream_in_flight", row["conns"], where)
    gen = master.generations.current
    for row in range(len(gen.health.targets)):
        probe = gen.health.read(row)
        where = (("upstream", probe["key"]), ("path", probe["path"]))
        out.add("rex_upstream_active_up", int(probe["state"] != "down"), where)
        out.add("rex_health_probes_total", probe["probes"], where)
    states: dict[str, int] = {}
    for v in views:
        states[v.state] = states.get(v.state, 0) + 1
    for name, count in sorted(states.items()):
        out.add("rex_workers", count, (("state", name),))
    out.add("rex_worker_restarts_total", master.restarts)
    for result in ("ok", "failed"):
        out.add("rex_reloads_total", master.generations.reloads[result], (("result", result),))
    out.add("rex_generation", gen.number)
    out.add("rex_ready", int(ready(master)))
    out.add("rex_start_time_seconds", round(master.started, 3))
    for inst in gen.config.instances:
        out.add("rex_site_info", 1, (
            ("site", str(inst.index)), ("listen", f"{inst.host}:{inst.port}"),
            ("scheme", inst.scheme), ("server_names", ",".join(inst.server_names))))
    out.add("rex_config_info", 1, (("path", gen.config.path), ("digest", gen.config.digest)))
    out.add("rex_build_info", 1, (("version", master.version),))
    _processes(out, master, views)
    return out.text()


def _processes(out: Exposition, master, views: list[View]) -> None:
    """``process_*`` for the master and every live worker, as the kernel sees them now.

    ``pid`` is a label too: a worker recycling (``max_requests``) drains beside its
    replacement, which has the same number and generation.
    """
    boot = procstat.boot_time()
    if boot is None:
        return  # no /proc on this system
    who = [(master.pid, (("process", "master"), ("pid", str(master.pid))))]
    who += [(v.proc.pid, (("process", "worker"), ("worker", str(v.proc.wid)),
                          ("generation", str(v.proc.generation)), ("pid", str(v.proc.pid))))
            for v in views]
    for pid, labels in who:
        usage = procstat.read(pid, boot)
        if usage is None:
            continue  # exited since the look at the workers: reaped on the next turn
        out.add("process_cpu_seconds_total", round(usage.cpu_seconds, 2), labels)
        out.add("process_resident_memory_bytes", usage.resident_bytes, labels)
        out.add("process_virtual_memory_bytes", usage.virtual_bytes, labels)
        out.add("process_start_time_seconds", round(usage.start_time, 2), labels)
        if usage.open_fds is not None:
            out.add("process_open_fds", usage.open_fds, labels)
        if usage.max_fds is not None:
            out.add("process_max_fds", usage.max_fds, labels)


# -- the admin pages (admin.py serves them, rex.py says which path is which) ---------------
def status_page(master) -> Answer:
    return 200, "application/json", json.dumps(status(master), indent=2).encode() + b"\n"


def metrics_page(master) -> Answer:
    return 200, CONTENT_TYPE, metrics(master).encode()


def ready_page(master) -> Answer:
    if ready(master):
        return 200, "text/plain", b"ready\n"
    return 503, "text/plain", f"not ready: {state(master)}\n".encode()
