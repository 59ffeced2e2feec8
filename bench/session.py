"""One bench session: start the systems, run wrk rounds, then the extra measures.

The order of events lives here: backend and reference first (without them
there is nothing to compare), then the contender, whose failure to start is
reported and leaves the nginx figures standing; a correctness check of every
URL; interleaved wrk rounds; idle-connection memory; route matching; Python
calls per request. Every
problem is collected as one line for the report rather than raised.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from . import h2, idle, report, routes, wsgirow
from .lab import REPO, Lab, System
from .procs import Server, StartError
from .scenarios import (
    CALLS_TARGETS,
    FLOOR_SCENARIO,
    IDLE_CONNECTIONS,
    IDLE_PATH,
    IDLE_SITE,
    IDLE_TARGET,
    MBPS,
    ROUTE_COUNTS,
    ROUTES_TARGET,
    SCENARIOS,
    WSGI_APP,
    WSGI_SCENARIO,
    Scenario,
)
from .wrk import WrkOutputError, WrkResult, command, parse

WARMUP_SECONDS = 1
REFERENCE = "nginx"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Results:
    reference: str
    contender: str
    samples: dict[str, dict[str, list[WrkResult]]]
    rows: list[report.Row] = field(default_factory=list)
    idle: dict[str, idle.IdleResult] = field(default_factory=dict)
    routes: routes.RoutesResult | None = None
    calls: dict[str, float] = field(default_factory=dict)  # scenario -> Python calls/request
    h2: h2.Runs = field(default_factory=dict)  # the HTTP/2 rows' runs (bench/h2.py)
    problems: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def as_json(self, meta: dict) -> dict:
        return {
            "meta": meta,
            "problems": self.problems,
            "rows": report.rows_json(self.rows),
            "runs": report.runs_json(self.samples),
            "idle": {name: asdict(result) for name, result in self.idle.items()},
            "routes": asdict(self.routes) if self.routes else None,
            "calls_per_request": self.calls,
            "h2": {key: {name: [asdict(r) | {"req_per_s": r.req_per_s} for r in got]
                         for name, got in by_system.items()}
                   for key, by_system in self.h2.items()},
        }


class Session:
    def __init__(self, lab: Lab, wrk: str, *, rounds: int, duration: float, threads: int,
                 warmup: bool, h2load: str | None = None) -> None:
        self.lab = lab
        self.wrk = wrk
        self.h2load = h2load
        self.rounds = rounds
        self.duration = duration
        self.threads = threads
        self.warmup = warmup

    def run(self, *, calibrate: bool, measure_idle: bool, nofile: int) -> Results:
        contender_name = "nginx-b" if calibrate else "rex"
        results = Results(REFERENCE, contender_name, {s.key: {} for s in SCENARIOS})
        results.meta = self._meta(calibrate)
        systems = self._start(results, calibrate)
        if systems:
            self._rounds(systems, results)
            self._floor(systems[0], results)
            if not calibrate:
                self._wsgi(results)
            if measure_idle:
                self._idle(systems, results, nofile)
            self._h2(results, calibrate)
        self._routes(results)
        self._calls(results)
        results.rows[:0] = report.scenario_rows(results.samples, SCENARIOS, REFERENCE,
                                                contender_name)
        return results

    # -- servers ------------------------------------------------------------
    def _start(self, results: Results, calibrate: bool) -> list[System]:
        self.lab.prepare()
        try:
            self.lab.start_backend()
        except StartError as exc:
            results.problems.append(f"the nginx backend could not start: {exc}")
            return []
        systems = [self.lab.start_system(REFERENCE, "nginx"),
                   self.lab.start_system(results.contender, "nginx" if calibrate else "rex")]
        for system in systems:
            for site, why in system.failed.items():
                results.problems.append(f"{system.name} ({site}) could not start: {why}")
                log(f"{system.name.upper()} ({site}) DID NOT START: {why.splitlines()[0]} "
                    "(its log is shown under PROBLEMS)")
            self.lab.verify(system, list(SCENARIOS))
            for key, why in system.broken.items():
                results.problems.append(f"{system.name}: {key} skipped: {why}")
        return systems

    # -- wrk rounds -----------------------------------------------------------
    def _rounds(self, systems: list[System], results: Results) -> None:
        if self.warmup:
            log("warming up")
            for scenario in SCENARIOS:
                for system in systems:
                    self._wrk(system, scenario, WARMUP_SECONDS, results)
        for number in range(self.rounds):
            # A B, then B A: drift over the session (heat, other load) hits both alike.
            order = systems if number % 2 == 0 else systems[::-1]
            for scenario in SCENARIOS:
                for system in order:
                    result = self._wrk(system, scenario, self.duration, results)
                    if result is not None:
                        results.samples[scenario.key].setdefault(system.name, []).append(result)
                        log(f"round {number + 1}/{self.rounds}  {scenario.label:<15} "
                            f"{system.name:<8} {_figure(result, scenario)}")

    def _wrk(self, system: System, scenario: Scenario, seconds: float,
             results: Results) -> WrkResult | None:
        server = system.server(scenario)
        if server is None or scenario.key in system.broken or server.proc.poll() is not None:
            return None
        worker = _worker(server)
        argv = command(self.wrk, system.url(scenario), connections=scenario.connections,
                       threads=self.threads, duration=seconds, script=self.lab.script,
                       headers=scenario.headers)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        code = server.proc.poll()
        if code is not None:
            results.problems.append(f"{server.name} exited with code {code} during "
                                    f"{scenario.label}:\n{server.log_tail()}")
            return None
        if worker and _worker(server) != worker:
            results.problems.append(f"{system.name}'s worker was replaced during "
                                    f"{scenario.label} (it crashed or hung)")
        try:
            return parse(proc.stdout)
        except WrkOutputError as exc:
            results.problems.append(f"wrk on {system.name} {scenario.label}: {exc} "
                                    f"(stderr: {proc.stderr.strip()[:200]})")
            return None

    # -- extra measures ---------------------------------------------------------
    def _idle(self, systems: list[System], results: Results, nofile: int) -> None:
        if nofile < IDLE_CONNECTIONS + idle.FD_MARGIN:
            results.problems.append(
                f"idle connections not measured: open files limit is {nofile}, "
                f"{IDLE_CONNECTIONS + idle.FD_MARGIN} needed (raise `ulimit -Hn`)")
            return
        for system in systems:
            server = system.servers.get(IDLE_SITE)
            if server is None or server.proc.poll() is not None:
                continue
            log(f"opening {IDLE_CONNECTIONS:,} idle connections to {server.name}")
            try:
                result = idle.measure(server.pid, system.ports[IDLE_SITE], IDLE_PATH,
                                      IDLE_CONNECTIONS)
            except (idle.IdleError, OSError) as exc:
                results.problems.append(f"idle connections on {system.name}: {exc}")
                continue
            results.idle[system.name] = result
            if result.error:
                results.problems.append(f"idle connections on {system.name}: {result.error}")
        ref, con = (results.idle.get(n) for n in (results.reference, results.contender))
        lost = IDLE_CONNECTIONS - con.still_open if con else 0
        note = f"{results.contender} closed {lost} of them before the RSS was read" if lost else ""
        results.rows.append(report.absolute_row(
            f"{IDLE_CONNECTIONS:,} idle conns, one worker", "RSS MB",
            ref.rss_mb if ref else None, con.rss_mb if con else None, IDLE_TARGET, note,
            errors=lost))

    def _h2(self, results: Results, calibrate: bool) -> None:
        """The HTTP/2 rows, on servers of their own (TLS on): bench/h2.py."""
        if self.h2load is None:
            results.problems.append("HTTP/2 rows not measured: h2load not found "
                                    "(Debian: apt-get install nghttp2-client)")
            return
        log("HTTP/2: h2load over TLS against both systems")
        rows, results.h2 = h2.measure(
            self.lab, self.h2load, (results.reference, results.contender),
            ("nginx", "nginx" if calibrate else "rex"), rounds=self.rounds,
            duration=self.duration, warmup=self.warmup, problems=results.problems, log=log)
        results.rows.extend(rows)

    def _routes(self, results: Results) -> None:
        log(f"timing route matching with {' and '.join(map(str, ROUTE_COUNTS))} routes")
        small, large = min(ROUTE_COUNTS), max(ROUTE_COUNTS)
        try:
            results.routes = routes.measure(ROUTE_COUNTS)
        # Rex's router is itself under test: whatever it raises is a finding to report.
        except Exception as exc:
            results.problems.append(f"route matching not measured: {type(exc).__name__}: {exc}")
            results.rows.append(report.Row(f"route match {large} vs {small}", "x", None, None,
                                           None, str(ROUTES_TARGET), report.MISSING))
            return
        cost = results.routes.ns_per_match
        results.rows.append(report.Row(
            f"route match {large} vs {small}", "x", None, None, results.routes.ratio,
            str(ROUTES_TARGET), report.verdict(ROUTES_TARGET, results.routes.ratio),
            note=f"{cost[small]:,.0f} ns per match with {small} routes, "
                 f"{cost[large]:,.0f} ns with {large} (rex_workers.config.routing.RouteTable)"))

    def _floor(self, reference: System, results: Results) -> None:
        """The bare relay beside nginx on the proxied 13 B scenario, alternated like the
        rounds: how far the interpreter and gevent alone stay from nginx."""
        scenario = next(s for s in SCENARIOS if s.key == FLOOR_SCENARIO)
        log(f"bare relay: {scenario.label}, {self.rounds} round(s)")
        relay = self.lab.start_relay()
        if relay.failed:
            results.problems.append(f"the bare relay could not start: {relay.failed['proxy']}")
            return
        figures: dict[str, list[float]] = {relay.name: [], reference.name: []}
        for number in range(self.rounds):
            for system in ([relay, reference] if number % 2 == 0 else [reference, relay]):
                result = self._wrk(system, scenario, self.duration, results)
                if result is not None:
                    figures[system.name].append(result.req_per_s)
        ref, floor = (report.median(figures[n]) for n in (reference.name, relay.name))
        results.rows.append(report.Row(
            f"bare relay {scenario.label}", "req/s", ref, floor,
            floor / ref if ref and floor else None,
            note="a 40-line gevent relay (bench/relay.py), no checks: the floor under Rex"))

    def _wsgi(self, results: Results) -> None:
        """The WSGI row: Rex's ``wsgi:`` route against gunicorn, alternated like the rounds."""
        scenario = WSGI_SCENARIO
        if not wsgirow.have_gunicorn():
            why = (f"skipped: gunicorn is not installed for {sys.executable} "
                   f"({wsgirow.GUNICORN_HINT}; a bench-only tool, not a Rex dependency)")
            log(f"{scenario.label}: {why}")
            results.rows.extend(wsgirow.skipped_rows(why))
            return
        log(f"{scenario.label}: Rex vs gunicorn -k gevent, {self.rounds} round(s)")
        systems = [self.lab.start_wsgi(wsgirow.REFERENCE, "gunicorn", WSGI_APP),
                   self.lab.start_wsgi(results.contender, "rex", WSGI_APP)]
        for system in systems:
            why = system.failed.get("wsgi") or wsgirow.check(system.ports["wsgi"])
            if why:
                results.problems.append(f"{system.name} ({scenario.label}): {why}")
                system.broken[scenario.key] = why

        def run(system: System) -> WrkResult | None:
            result = self._wrk(system, scenario, self.duration, results)
            if result is not None:
                log(f"{scenario.label:<17} {system.name:<8} {_figure(result, scenario)}")
            return result

        if self.warmup:
            for system in systems:
                self._wrk(system, scenario, WARMUP_SECONDS, results)
        figures = wsgirow.alternate(systems, self.rounds, run)
        results.samples[scenario.key] = figures
        results.rows.extend(wsgirow.rows(figures, results.contender))

    def _calls(self, results: Results) -> None:
        """Python calls per request in an in-process worker (``bench/calls.py``): counted
        in a child process of its own, so the bench itself never runs gevent's hub."""
        log("counting Python calls per request (bench/calls.py)")
        run = subprocess.run([sys.executable, "-m", "bench.calls", "--json"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        try:
            figures = json.loads(run.stdout)
        except ValueError:
            results.problems.append(f"calls per request not measured: {run.stderr[-300:]}")
            return
        results.calls = figures
        for name, calls in figures.items():
            target = CALLS_TARGETS.get(name)
            results.rows.append(report.Row(
                f"calls/request {name}", "calls", None, calls, None,
                str(target) if target else "", report.verdict(target, calls) if target else ""))

    def _meta(self, calibrate: bool) -> dict:
        return {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "nginx": _version([self.lab.nginx, "-v"]),
            "wrk": _version([self.wrk, "-v"]),
            "calibrate": calibrate,
        }


def _worker(server: Server) -> int | None:
    try:
        return idle.worker_of(server.pid)
    except idle.IdleError:
        return None


def _figure(result: WrkResult, scenario: Scenario) -> str:
    value = (f"{result.mb_per_s:,.1f} MB/s" if scenario.metric == MBPS
             else f"{result.req_per_s:,.0f} req/s")
    errors = f"  {result.error_count} failed" if result.error_count else ""
    return f"{value}  p99 {result.p99_ms:.2f} ms{errors}"


def _version(argv: list[str]) -> str:
    """First line a tool prints about itself (nginx and wrk print to stderr, wrk exits 1)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"unknown ({exc})"
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"
