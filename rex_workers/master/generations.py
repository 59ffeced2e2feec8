"""The master's generations: the one serving, the one a reload is starting, and reloads.

A generation is the workers of one config (``supervise.Generation``). A
reload (SIGHUP, or the config file changing on disk) validates the config,
binds what it adds and starts the next generation beside the serving one;
only when all its workers are ready does it take over and the old one drain
(SPEC §9). A reload asked for while a generation is starting waits until
that one serves or is given up.

Each reload's outcome is kept in ``last`` (the status document shows it):
when it began, why, the config, and ``starting``, ``ok`` or ``failed`` with
the reason. ``rex reload`` and ``rex load`` wait on it: a reload that began
after they sent SIGHUP read the config as it was then, so its outcome is
theirs to report (``control.py``).

May: build a generation (refuse a config this master cannot serve, bind its
listeners, map its shared tables), resize the serving one (TTIN/TTOU),
close the sockets and unmap the tables no generation needs any more, judge
readiness from the scoreboard, watch the config file, count reloads, log,
tell systemd. May not: fork, signal or reap (it asks the master to drain
workers), or import gevent. ``master`` is the Arbiter (``rex.py``):
``Master`` below is all that is used of it.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import Protocol

from ..config.model import Config
from ..shared import privileges
from ..shared.metrics import Layout, MetricsTable, probe_targets
from ..shared.ratetable import InFlightTable, LimitTables, RateTable
from ..shared.scoreboard import READY, Scoreboard
from ..shared.sharedhealth import HealthTable
from ..shared.tls import certificate_problem
from .daemon import MasterLog, notify_systemd
from .listeners import BindError, Listeners
from .supervise import ConfigWatch, Generation, Proc, boot_limit, urls

CONFIG_POLL = 0.25  # seconds between looks at the config file


class Refused(Exception):
    """A config this master cannot serve, said the way a person fixes it.

    ``rex start`` fails with it; a reload logs it and the serving generation stays.
    """


class Master(Protocol):
    """What the generations use of the Arbiter, which owns processes and sockets."""

    pid: int
    version: str
    override: int | None  # -w N: the number of workers, whatever the config says
    log: MasterLog
    board: Scoreboard
    listeners: Listeners

    def config_path(self) -> str: ...
    def admin_for(self, config: Config) -> None: ...  # Refused if it cannot bind
    def workers(self, number: int) -> list[Proc]: ...  # generation's, not draining
    def drain(self, proc: Proc) -> None: ...
    def report_start(self, ok: bool, text: str) -> None: ...
    def write_info(self) -> None: ...


class Generations:
    """Every generation with workers left, oldest first; ``current`` serves."""

    def __init__(self, master: Master, config: Config) -> None:
        self.master = master
        self.log = master.log
        self._by_number: dict[int, Generation] = {}
        self.pending: Generation | None = None  # a reload's, until it serves or is given up
        self.queued = ""  # why a reload was asked for while a generation was starting
        self.queued_path: str | None = None  # and the config `rex load` asked for, if it did
        self.reloads = {"ok": 0, "failed": 0, "last_error": ""}
        self.last: dict | None = None  # the latest reload and its outcome (see above)
        self.boot_error = ""  # the first generation cannot start: `rex start` fails with it
        self.rates = RateTable()  # the master's: budgets outlive a reload (ratetable.py)
        self.current = self._new(config)  # binds: Refused when a port is taken
        self.watch = ConfigWatch(config.path)  # the file it was read from, as it is now
        self.next_poll = 0.0

    def __getitem__(self, number: int) -> Generation:
        return self._by_number[number]

    def __iter__(self) -> Iterator[Generation]:
        return iter(self._by_number.values())  # numbers only grow: oldest first

    def active(self) -> list[Generation]:
        """The serving generation and the one starting, if any: those that get workers."""
        return [self.current] + ([self.pending] if self.pending else [])

    def snapshot(self) -> tuple:
        """What the status document shows of the generations: it is rewritten when this changes."""
        return (self.current.number, self.current.ready, self.pending and self.pending.number,
                self.reloads["ok"], self.reloads["failed"], self.last and self.last["asked"])

    # -- building, resizing and retiring ------------------------------------------------------
    def _new(self, config: Config) -> Generation:
        from ..config.routing import listeners

        if config.reuse_port != self.master.listeners.reuse_port:
            raise Refused("reuse_port cannot change on reload: restart rex to switch it")
        # Workers load certificates when they boot; a file that cannot load must fail
        # `rex start` or the reload here, with its name, not as a worker boot failure.
        problems = [p for p in map(certificate_problem, config.instances) if p]
        if problems:
            raise Refused("\n".join(problems))
        problem = privileges.prepare(config, os.geteuid(), self.master.log.path or "")
        if problem:  # a wsgi: app as root without user: root, or logs the user cannot write
            raise Refused(problem)
        vhosts = listeners(config)
        gen = Generation(max(self._by_number, default=0) + 1, config, vhosts,
                         self.master.override or config.workers, time.monotonic())
        self._bind(gen)
        self.master.admin_for(config)
        gen.metrics = MetricsTable(Layout(config), self.master.board.slots)
        gen.health = HealthTable(probe_targets(config))
        gen.limits = LimitTables(self.rates, InFlightTable(config, self.master.board.slots))
        if self._by_number:
            gen.health.inherit(self.current.health)  # a reload keeps what the probes found
        self._by_number[gen.number] = gen
        return gen

    def _bind(self, gen: Generation) -> None:
        """Bind what ``gen``'s addresses and worker count need; all or nothing."""
        listeners = self.master.listeners
        where = {a: f"instance {vh.instances[0].index}" for a, vh in gen.vhosts.items()}
        try:
            listeners.bind(where, gen.want)
        except BindError as exc:
            if exc.port in {address[1] for address, _wid in listeners.sockets}:
                raise Refused(f"{exc}: this master listens on it with another host, and "
                              "changing an instance's host needs a restart") from None
            raise Refused(str(exc)) from None

    def hand_over_logs(self) -> None:
        """SIGUSR1: workers reopen their logs as ``user``: files a rotation moved away are
        created again and given to it first (nginx's master does the same)."""
        problem = privileges.prepare(self.current.config, os.geteuid(), self.master.log.path)
        if problem:
            self.log.error(problem)

    def grow(self) -> None:
        """SIGTTIN: one worker more for the serving generation."""
        gen = self.current
        if gen.want >= self.master.board.slots // 2:  # a reload needs room for two generations
            self.log.error(f"SIGTTIN ignored: {gen.want} workers is the most rex runs")
            return
        gen.want += 1
        try:
            self._bind(gen)  # reuse_port: the new slot needs its own sockets
        except Refused as exc:
            gen.want -= 1
            self.log.error(f"SIGTTIN ignored: {exc}")
            return
        self.log.info(f"workers: {gen.want} (SIGTTIN)")

    def shrink(self) -> None:
        """SIGTTOU: one worker fewer for the serving generation."""
        gen = self.current
        if gen.want > 1:
            gen.want -= 1
            self.log.info(f"workers: {gen.want} (SIGTTOU)")

    def close_unused(self, procs: Iterable[Proc]) -> None:
        """Close the sockets nobody needs any more.

        An address the current config serves keeps its workers' sockets; one a
        reload removed closes once the last worker that served it is gone. The
        reuse_port socket of a retired slot closes at once: its worker no longer
        accepts, and the kernel would keep queuing connections on it for nobody.
        """
        listeners = self.master.listeners
        used = set()
        for gen in self.active():
            used |= listeners.keys(gen.vhosts, range(1, gen.want + 1))
        for proc in procs:
            gone = [a for a in self[proc.generation].vhosts if a not in self.current.vhosts]
            used |= listeners.keys(gone, [proc.wid])
        listeners.keep_only(used)

    def retire(self, running: set[int]) -> list[int]:
        """Unmap the generations neither serving, starting nor ``running``; their numbers."""
        keep = running | {gen.number for gen in self.active()}
        gone = [number for number in self._by_number if number not in keep]
        for number in gone:
            gen = self._by_number.pop(number)
            gen.metrics.close()
            gen.health.close()
            gen.limits.inflight.close()
        return gone

    # -- readiness ---------------------------------------------------------------------------
    def check_ready(self) -> None:
        """Serve the starting generation once all its workers are ready; give up a slow one."""
        gen = self.pending or self.current
        if gen.ready:
            return
        live = self.master.workers(gen.number)
        board = self.master.board
        if len(live) >= gen.want and all(board.read(p.slot).state == READY for p in live):
            gen.ready = True
            self._switch() if gen is self.pending else self._ready()
            return
        limit = boot_limit(gen.config)
        if time.monotonic() - gen.started > limit:
            self.failed(gen, f"workers did not become ready within {limit:g}s")

    def failed(self, gen: Generation, reason: str) -> None:
        """``gen`` cannot start (a worker failed to boot, or it was too slow)."""
        if gen is self.pending:
            self._abandon(reason)
        else:
            self.boot_error = reason

    def _ready(self) -> None:
        gen, master = self.current, self.master
        text = "\n".join([f"rex {master.version}: master {master.pid}, {gen.want} worker(s), "
                          "serving", *(f"  {url}" for url in urls(gen.config))])
        self.log.info(text)
        master.report_start(True, text)
        notify_systemd(b"READY=1\nMAINPID=%d\nSTATUS=%s" % (master.pid, self._summary()))
        self._run_queued()

    def _summary(self) -> bytes:
        """systemd's STATUS= line: what `systemctl status` shows under the unit."""
        gen = self.current
        return f"serving generation {gen.number} with {gen.want} worker(s)".encode()

    # -- reload ------------------------------------------------------------------------------
    def poll_config(self) -> None:
        """Reload when the config file changed on disk (and settled: ``ConfigWatch``)."""
        now = time.monotonic()
        if now < self.next_poll or self.pending is not None:
            return
        self.next_poll = now + CONFIG_POLL
        path = self.master.config_path()
        changed = self.watch.changed(path, self.current.config.digest)
        if changed:
            self.reload("config file changed")
        elif changed is None:
            self.log.error(f"config file {path} is gone; still serving generation "
                           f"{self.current.number}")

    def reload(self, why: str, path: str | None = None) -> None:
        """Start a generation from ``path`` (``rex load``), else from the served file."""
        from ..config.loader import ConfigError, load_config

        starting = self.pending or (None if self.current.ready else self.current)
        if starting is not None:
            # Runs once the generation starting now has settled; a HUP without a path
            # arriving meanwhile must not drop the config a `rex load` asked for.
            self.queued, self.queued_path = why, path or self.queued_path
            self.log.info(f"reload ({why}) queued behind generation {starting.number}")
            return
        path = path or self.master.config_path()
        self.last = {"asked": time.time(), "why": why, "config": path, "result": "starting",
                     "generation": None, "error": "", "finished": None}
        # The file as it is now is what this reload tries. A failed `rex load` leaves the
        # watch on the other file for a moment: the served file's next look finds the bytes
        # it serves and does not reload.
        self.watch.accept(path)
        try:
            self.pending = self._new(load_config(path))
        except Exception as exc:  # even a loader bug must leave the old config serving
            said = isinstance(exc, (ConfigError, Refused))
            error = str(exc) if said else traceback.format_exc().strip()
            self._outcome("failed", error)
            self.log.error(f"reload ({why}) failed; still serving generation "
                           f"{self.current.number}:\n{error}")
            return
        self.last["generation"] = self.pending.number
        self.log.info(f"reload ({why}): starting generation {self.pending.number} from {path}")
        notify_systemd(b"RELOADING=1\nSTATUS=reloading: starting generation %d"
                       % self.pending.number)

    def _switch(self) -> None:
        old, self.current, self.pending = self.current, self.pending, None
        self._outcome("ok")
        self._drain(old)  # one TERM: stop accepting, finish, exit
        self.log.info(f"generation {self.current.number} is serving ({self.current.want} "
                      f"workers); generation {old.number} is draining")
        self.master.write_info()
        notify_systemd(b"READY=1\nSTATUS=%s" % self._summary())
        self._run_queued()

    def _abandon(self, reason: str) -> None:
        gen, self.pending = self.pending, None
        self._outcome("failed", reason)
        self._drain(gen)  # some may already serve: let them finish
        self.log.error(f"reload failed; still serving generation {self.current.number}: {reason}")
        notify_systemd(b"READY=1\nSTATUS=%s (last reload failed)" % self._summary())
        self._run_queued()

    def _drain(self, gen: Generation) -> None:
        for proc in self.master.workers(gen.number):
            self.master.drain(proc)

    def _outcome(self, result: str, error: str = "") -> None:
        self.reloads[result] += 1
        if error:
            self.reloads["last_error"] = error
        if self.last is not None:
            self.last.update(result=result, error=error, finished=time.time())

    def _run_queued(self) -> None:
        why, path, self.queued, self.queued_path = self.queued, self.queued_path, "", None
        if why:
            self.reload(why, path)
