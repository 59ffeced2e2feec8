"""Rex: reverse proxy, load balancer and static file server.

Usage:
  rex --init [--force]
  rex load <config>
  rex check [<config>]
  rex test [-p <config>]
  rex start [-c <config>] [-f] [-w N]
  rex stop [-p <pid>] [--timeout S]
  rex reload [-p <pid>]
  rex status [--json]
  rex log [-e <file>]
  rex reset
  rex --version
  rex -h | --help

Commands:
  --init        write ./rex.config.yaml and ./public/index.html (refuses to
                overwrite without --force)
  load          validate <config>, make it the active config; running masters
                started on the active config reload onto it
  check, test   validate a config (default: the active one) and exit
  start         start a master and its workers; returns once every worker is
                ready and prints the URLs (-f: stay in the foreground)
  stop          graceful stop of every master, or of the one with -p PID
  reload        re-read the config without dropping a request (= SIGHUP)
  status        masters and their workers
  log           follow the server log (-e: export it to <file>)
  reset         forget the config recorded by `rex load`

Options:
  -c <config>, --config <config>  config file [default: active config]
  -f, --foreground                do not daemonize; log to stdout/stderr
  -w N, --workers N               number of workers (overrides the config)
  -p <pid>                        a master's pid (stop/reload), or the
                                  config path (test)
  --timeout S                     seconds `stop` waits for masters [default: 60]
  --force                         overwrite existing files with --init
  --json                          machine-readable status
  -e <file>, --export <file>      copy the server log to <file>
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
import time
import traceback
from dataclasses import replace

from rex_workers.config.model import Config
from rex_workers.master import registry, reports
from rex_workers.master.admin import AdminServer
from rex_workers.master.daemon import (
    MasterLog,
    daemonize,
    notify_systemd,
    tell,
    wait_report,
)
from rex_workers.master.exposition import CONTENT_TYPE, Retired
from rex_workers.master.listeners import BindError, Listeners, raise_nofile
from rex_workers.master.supervise import Backoff, ConfigWatch, Generation, Proc, describe_exit, urls
from rex_workers.serve.tls import certificate_problem
from rex_workers.shared.boot import WorkerBoot
from rex_workers.shared.metrics import Layout, MetricsTable, Shared, probe_targets
from rex_workers.shared.proctitle import set_title
from rex_workers.shared.scoreboard import BOOTING, DRAINING, FAILED, READY, Scoreboard
from rex_workers.shared.sharedhealth import HealthTable

__version__ = "0.1.0"

# ---------------------------------------------------------------------------
# Exit codes and constants
# ---------------------------------------------------------------------------
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
CONFIG_NAME = "rex.config.yaml"
TICK = 0.2  # the loop's longest sleep: heartbeats and deadlines are checked this often
BOOT_TIMEOUT = 30.0  # seconds a generation may take to become ready (or `timeout`, if longer)
CONFIG_POLL = 0.25  # seconds between looks at the config file
KILL_MARGIN = 5.0  # a drain overrunning graceful_timeout by this much gets SIGKILL
FAST_STOP = 2.0  # INT/QUIT: seconds before workers that did not exit get SIGKILL
STATUS_EVERY = 1.0  # the status file is rewritten on every change and at least this often


class RexError(Exception):
    """A failure the user can act on: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# State directory: active config, pid files, logs (SPEC §2)
# ---------------------------------------------------------------------------
def rex_home() -> str:
    home = os.environ.get("REX_HOME")
    if not home:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        home = os.path.join(state, "rex")
    os.makedirs(os.path.join(home, "run"), exist_ok=True)
    return home


def run_dir() -> str:
    return os.path.join(rex_home(), "run")


def active_config() -> str:
    """The config `rex load` recorded, else ./rex.config.yaml (`-c` is the caller's)."""
    with contextlib.suppress(FileNotFoundError):
        with open(os.path.join(rex_home(), "active"), encoding="utf-8") as f:
            path = f.read().strip()
        if path:
            return path
    return os.path.abspath(CONFIG_NAME)


def load(path: str):
    """Load and validate ``path``; config errors become RexError(code 2)."""
    from rex_workers.config.loader import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise RexError(str(exc), EXIT_USAGE) from None


# ---------------------------------------------------------------------------
# Arbiter: the master loop. Signal handlers only queue; one loop dispatches
# them, then reap -> murder -> manage, and never sleeps longer than TICK.
# ---------------------------------------------------------------------------
class Arbiter:
    SIGNALS = ("HUP", "TERM", "INT", "QUIT", "TTIN", "TTOU", "USR1", "CHLD")

    def __init__(self, config: Config, source: str, workers: int | None, log: MasterLog) -> None:
        self.pid = os.getpid()
        self.version = __version__
        self.source = source  # "explicit" (-c) or "active": what a reload re-reads
        self.override = workers  # -w N wins over the config's `workers`, on reloads too
        self.log = log
        self.notify: int | None = None  # daemon: the pipe `rex start` waits on
        self.board = Scoreboard()
        self.free_slots = list(range(self.board.slots))
        self.procs: dict[int, Proc] = {}
        self.signals: list[int] = []
        self.listeners = Listeners(config.reuse_port)
        self.generations: dict[int, Generation] = {}
        self.pending: Generation | None = None
        self.admin: AdminServer | None = None
        self.gen = self._new_generation(config)  # binds: RexError when a port is taken
        self.backoff = Backoff()
        self.watch = ConfigWatch(self.config_path())
        self.stopping = 0.0  # monotonic deadline of a stop; 0 while running
        self.boot_error = ""
        self.reload_queued = ""
        self.reloads = {"ok": 0, "failed": 0, "last_error": ""}
        self.restarts = 0
        self.retired = Retired()  # counters of workers that have exited (metrics.py)
        self.started = time.time()
        self.next_poll = self.status_due = 0.0
        self.status_states: list = []

    def _new_generation(self, config: Config) -> Generation:
        from rex_workers.config.routing import listeners

        if config.reuse_port != self.listeners.reuse_port:
            raise RexError("reuse_port cannot change on reload: restart rex to switch it")
        # Workers load certificates when they boot; a file that cannot load must fail
        # `rex start` or the reload here, with its name, not as a worker boot failure.
        problems = [p for p in map(certificate_problem, config.instances) if p]
        if problems:
            raise RexError("\n".join(problems))
        vhosts = listeners(config)
        gen = Generation(max(self.generations, default=0) + 1, config, vhosts,
                         self.override or config.workers, time.monotonic())
        self._bind(gen)
        self._admin_for(config)
        gen.metrics = MetricsTable(Layout(config), self.board.slots)
        gen.health = HealthTable(probe_targets(config))
        if self.generations:
            gen.health.inherit(self.gen.health)  # a reload keeps what the probes found
        self.generations[gen.number] = gen
        return gen

    def _admin_for(self, config: Config) -> None:
        """Open, move or close the admin listener as the config says (before the switch)."""
        address = (config.admin.host, config.admin.port) if config.admin else None
        if self.admin is not None and self.admin.address == address:
            return
        new = None
        if address is not None:
            pages = {"/status": self._status_page, "/metrics": self._metrics_page,
                     "/ready": self._ready_page, "/live": lambda: (200, "text/plain", b"ok\n")}
            try:
                new = AdminServer(address, pages, self.log.error)
            except BindError as exc:
                raise RexError(str(exc)) from None
        if self.admin is not None:
            self.admin.close()
        self.admin = new

    def _bind(self, gen: Generation) -> None:
        where = {a: f"instance {vh.instances[0].index}" for a, vh in gen.vhosts.items()}
        try:
            self.listeners.bind(where, gen.want)
        except BindError as exc:
            if exc.port in {address[1] for address, _wid in self.listeners.sockets}:
                raise RexError(f"{exc}: this master listens on it with another host, and "
                               "changing an instance's host needs a restart") from None
            raise RexError(str(exc)) from None

    def config_path(self) -> str:
        return active_config() if self.source == "active" else self.gen.config.path

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        self.pipe_r, self.pipe_w = os.pipe()
        for fd in (self.pipe_r, self.pipe_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.pipe_w, warn_on_full_buffer=False)
        self.signums = {getattr(signal, f"SIG{name}") for name in self.SIGNALS}
        for signum in self.signums:
            signal.signal(signum, lambda signum, frame: self.signals.append(signum))
        self._write_info()
        while True:
            self._sleep(TICK)
            while self.signals:
                getattr(self, f"handle_{signal.Signals(self.signals.pop(0)).name[3:].lower()}")()
            self.reap()
            self.murder()
            self.manage()
            if self.boot_error:
                self._abort_boot()
            if self.stopping and not self.procs:
                return EXIT_OK
            if not self.stopping:
                self.poll_config()
            self.write_status()

    def _sleep(self, timeout: float) -> None:
        """Until the timeout, a signal (the wakeup fd makes the pipe readable) or admin I/O."""
        admin = self.admin
        readers, writers = (admin.readers(), admin.writers()) if admin else ([], [])
        try:
            readable, writable, _ = select.select([self.pipe_r, *readers], writers, [], timeout)
        except InterruptedError:
            return
        if self.pipe_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.pipe_r, 4096):
                    pass
        if admin is not None:
            admin.handle(set(readable), set(writable))

    # -- signals (dispatched by name) -----------------------------------------------------
    def handle_chld(self) -> None:
        pass  # reap() runs after every wake-up

    def handle_hup(self) -> None:
        self.reload("SIGHUP")

    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_int(self) -> None:
        self.stop(graceful=False)

    handle_quit = handle_int

    def handle_ttin(self) -> None:
        gen = self.gen
        if gen.want >= self.board.slots // 2:  # a reload needs room for two generations
            self.log.error(f"SIGTTIN ignored: {gen.want} workers is the most rex runs")
            return
        gen.want += 1
        try:
            self._bind(gen)  # reuse_port: the new slot needs its own sockets
        except RexError as exc:
            gen.want -= 1
            self.log.error(f"SIGTTIN ignored: {exc}")
            return
        self.log.info(f"workers: {gen.want} (SIGTTIN)")

    def handle_ttou(self) -> None:
        if self.gen.want > 1:
            self.gen.want -= 1
            self.log.info(f"workers: {self.gen.want} (SIGTTOU)")

    def handle_usr1(self) -> None:
        self.log.reopen()
        self.log.info("log files reopened (SIGUSR1)")
        for proc in self.procs.values():
            self._kill(proc, signal.SIGUSR1)

    # -- reap -> murder -> manage -----------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.procs.pop(pid, None)
            if proc is not None:
                self._reaped(proc, status)

    def _reaped(self, proc: Proc, status: int) -> None:
        info = self.board.read(proc.slot)
        gen = self.generations[proc.generation]
        self.retired.fold(gen.metrics.layout, gen.metrics.read(proc.slot))  # before slot reuse
        self.free_slots.append(proc.slot)
        self.status_due = 0.0
        if proc.draining_since or self.stopping or info.state == DRAINING:
            # Told to stop, or it drained on its own (max_requests) before murder() saw it.
            self.log.info(f"{proc} exited ({describe_exit(status)})")
            return
        self.restarts += 1
        failed = info.state == FAILED
        reason = info.reason if failed else f"{proc} died ({describe_exit(status)})"
        if failed and gen is self.pending:
            self._abandon_pending(reason)
        elif failed and not gen.ready:
            self.boot_error = reason  # the first generation: `rex start` fails with it
        else:
            now = time.monotonic()
            delay = self.backoff.died((gen.number, proc.wid), now - proc.started, now)
            self.log.error(f"{reason}; respawning " + (f"in {delay:.1f}s" if delay else "now"))

    def murder(self) -> None:
        """SIGKILL workers whose heartbeat stopped (hub blocked) and drains that overran."""
        now = time.monotonic()
        for proc in [p for p in self.procs.values() if not p.killed]:
            config = self.generations[proc.generation].config
            info = self.board.read(proc.slot)
            silent = now - info.heartbeat
            if proc.draining_since:
                if now - proc.draining_since > config.graceful_timeout + KILL_MARGIN:
                    self.log.error(f"{proc} still draining {KILL_MARGIN:g}s past graceful_timeout"
                                   f" ({config.graceful_timeout:g}s): killing it")
                    self._kill(proc, signal.SIGKILL)
            elif info.state == DRAINING:
                # It began draining on its own (max_requests): its replacement starts now.
                proc.draining_since = now
                self.status_due = 0.0
                self.log.info(f"{proc} is recycling after {info.requests} requests")
            elif info.state == BOOTING and silent > max(BOOT_TIMEOUT, config.timeout):
                # Importing a big app may take longer than `timeout`: a boot has its own limit.
                self.log.error(f"{proc} still booting after {silent:.0f}s: killing it")
                self._kill(proc, signal.SIGKILL)
            elif info.state != BOOTING and silent > config.timeout:
                self.log.error(f"{proc} sent no heartbeat for {silent:.1f}s "
                               f"(timeout {config.timeout:g}s): killing it")
                self._kill(proc, signal.SIGKILL)

    def manage(self) -> None:
        if self.stopping:
            if time.monotonic() > self.stopping and not all(p.killed for p in self.procs.values()):
                self.log.error(f"{len(self.procs)} worker(s) still running: killing them")
                for proc in self.procs.values():
                    self._kill(proc, signal.SIGKILL)
            return
        for gen in (self.gen, self.pending):
            if gen is not None:
                self._spawn_missing(gen)
        self._check_ready(self.pending or self.gen)
        for proc in list(self.procs.values()):
            if (proc.generation == self.gen.number and proc.wid > self.gen.want
                    and not proc.draining_since):
                self._drain(proc)  # TTOU: the highest wids leave
        self._close_unused()
        live = {p.generation for p in self.procs.values()} | {self.gen.number}
        live |= {self.pending.number} if self.pending else set()
        for number in [n for n in self.generations if n not in live]:
            gen = self.generations.pop(number)
            gen.metrics.close()
            gen.health.close()
            self.backoff.forget(number)

    def _spawn_missing(self, gen: Generation) -> None:
        running = {p.wid for p in self.procs.values()
                   if p.generation == gen.number and not p.draining_since}
        now = time.monotonic()
        for wid in range(1, gen.want + 1):
            if wid not in running and self.backoff.due((gen.number, wid), now):
                self.spawn(gen, wid)

    def _check_ready(self, gen: Generation) -> None:
        if gen.ready:
            return
        live = [p for p in self.procs.values()
                if p.generation == gen.number and not p.draining_since]
        if len(live) >= gen.want and all(self.board.read(p.slot).state == READY for p in live):
            gen.ready = True
            self.status_due = 0.0
            self._switch_generation() if gen is self.pending else self._ready()
            return
        limit = max(BOOT_TIMEOUT, gen.config.timeout)
        if time.monotonic() - gen.started > limit:
            reason = f"workers did not become ready within {limit:g}s"
            if gen is self.pending:
                self._abandon_pending(reason)
            else:
                self.boot_error = reason

    def _close_unused(self) -> None:
        """Close the sockets nobody needs any more.

        An address the current config serves keeps its workers' sockets; one a
        reload removed closes once the last worker that served it is gone. The
        reuse_port socket of a retired slot closes at once: its worker no longer
        accepts, and the kernel would keep queuing connections on it for nobody.
        """
        used = set()
        for gen in (self.gen, self.pending):
            if gen is not None:
                used |= self.listeners.keys(gen.vhosts, range(1, gen.want + 1))
        for proc in self.procs.values():
            gone = [a for a in self.generations[proc.generation].vhosts
                    if a not in self.gen.vhosts]
            used |= self.listeners.keys(gone, [proc.wid])
        self.listeners.keep_only(used)

    # -- processes --------------------------------------------------------------------------
    def spawn(self, gen: Generation, wid: int) -> None:
        if not self.free_slots:
            self.log.error(f"no free scoreboard slot for worker {wid}: not started")
            return
        slot = self.free_slots.pop(0)
        self.board.reset(slot, gen.number)
        gen.metrics.reset(slot)
        boot = WorkerBoot(gen.config, gen.vhosts, self.listeners.for_worker(gen.vhosts, wid),
                          self.board.writer(slot), worker_id=wid, generation=gen.number,
                          master_pid=self.pid, log_path=self.log.path,
                          shared=Shared(slot, gen.metrics, gen.health))
        # Signals stay blocked across fork, so none runs the master's handler in the child.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signums)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.free_slots.append(slot)
            self.backoff.delay((gen.number, wid), 1.0, time.monotonic())
            self.log.error(f"cannot fork worker {wid}: {exc.strerror}; trying again in 1s")
            return
        if pid == 0:
            self._child(boot, mask)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.procs[pid] = Proc(pid, slot, wid, gen.number, time.monotonic())
        self.status_due = 0.0

    def _child(self, boot: WorkerBoot, mask) -> None:
        """In the new worker process: undo the master's signal setup, then become the worker."""
        signal.set_wakeup_fd(-1)
        for signum in self.signums:  # HUP, USR1, TTIN/TTOU must not kill or stop a booting worker
            keep_alive = signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU)
            signal.signal(signum, signal.SIG_IGN if keep_alive else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # Not the worker's: the wakeup pipe, the pipe `rex start` waits on (it must see
        # EOF when the master closes its end) and the sockets of other addresses or slots.
        # The admin sockets too: a client connection a worker kept open would never see EOF.
        drop = [self.pipe_r, self.pipe_w, self.notify]
        drop += self.admin.sockets() if self.admin else []
        drop += [s for s in self.listeners.sockets.values() if s not in boot.sockets.values()]
        from rex_workers.serve.worker import main

        main(boot, drop)

    def _kill(self, proc: Proc, sig: int) -> None:
        proc.killed = proc.killed or sig == signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def _drain(self, proc: Proc) -> None:
        proc.draining_since = time.monotonic()
        self.status_due = 0.0
        self._kill(proc, signal.SIGTERM)

    # -- readiness, reload, stop -------------------------------------------------------------
    def _ready(self) -> None:
        text = "\n".join([f"rex {__version__}: master {self.pid}, {self.gen.want} worker(s), "
                          "serving", *(f"  {url}" for url in urls(self.gen.config))])
        self.log.info(text)
        self.report_start(True, text)
        notify_systemd(b"READY=1\nMAINPID=%d\nSTATUS=%s" % (self.pid, self._summary()))
        self._run_queued_reload()

    def _summary(self) -> bytes:
        """systemd's STATUS= line: what `systemctl status` shows under the unit."""
        return f"serving generation {self.gen.number} with {self.gen.want} worker(s)".encode()

    def report_start(self, ok: bool, text: str) -> None:
        """Tell a waiting `rex start` (daemon mode) whether we are serving; once."""
        if self.notify is not None:
            tell(self.notify, ok, text)
            self.notify = None

    def _abort_boot(self) -> None:
        """The first generation cannot start: stop its workers and fail `rex start`."""
        for proc in self.procs.values():
            self._kill(proc, signal.SIGKILL)
        deadline = time.monotonic() + FAST_STOP
        while self.procs and time.monotonic() < deadline:
            self._sleep(0.05)
            self.reap()
        raise RexError(self.boot_error)

    def reload(self, why: str) -> None:
        if self.stopping:
            return
        starting = self.pending or (None if self.gen.ready else self.gen)
        if starting is not None:
            self.reload_queued = why  # runs once the generation starting now has settled
            self.log.info(f"reload ({why}) queued behind generation {starting.number}")
            return
        path = self.config_path()
        self.watch.accept(path)
        try:
            self.pending = self._new_generation(load(path))
        except Exception as exc:  # even a loader bug must leave the old config serving
            error = str(exc) if isinstance(exc, RexError) else traceback.format_exc().strip()
            self.reloads["failed"] += 1
            self.reloads["last_error"] = error
            self.status_due = 0.0
            self.log.error(f"reload ({why}) failed; still serving generation "
                           f"{self.gen.number}:\n{error}")
            return
        self.log.info(f"reload ({why}): starting generation {self.pending.number} from {path}")
        notify_systemd(b"RELOADING=1\nSTATUS=reloading: starting generation %d"
                       % self.pending.number)

    def _switch_generation(self) -> None:
        old, self.gen, self.pending = self.gen, self.pending, None
        self.reloads["ok"] += 1
        for proc in list(self.procs.values()):
            if proc.generation == old.number and not proc.draining_since:
                self._drain(proc)  # one TERM: stop accepting, finish, exit
        self.log.info(f"generation {self.gen.number} is serving ({self.gen.want} workers); "
                      f"generation {old.number} is draining")
        self._write_info()
        notify_systemd(b"READY=1\nSTATUS=%s" % self._summary())
        self._run_queued_reload()

    def _abandon_pending(self, reason: str) -> None:
        gen, self.pending = self.pending, None
        self.reloads["failed"] += 1
        self.reloads["last_error"] = reason
        self.status_due = 0.0
        for proc in list(self.procs.values()):
            if proc.generation == gen.number and not proc.draining_since:
                self._drain(proc)  # some may already serve: let them finish
        self.log.error(f"reload failed; still serving generation {self.gen.number}: {reason}")
        notify_systemd(b"READY=1\nSTATUS=%s (last reload failed)" % self._summary())
        self._run_queued_reload()

    def _run_queued_reload(self) -> None:
        why, self.reload_queued = self.reload_queued, ""
        if why:
            self.reload(why)

    def poll_config(self) -> None:
        now = time.monotonic()
        if now < self.next_poll or self.pending is not None:
            return
        self.next_poll = now + CONFIG_POLL
        path = self.config_path()
        changed = self.watch.changed(path, self.gen.config.digest)
        if changed:
            self.reload("config file changed")
        elif changed is None:
            self.log.error(f"config file {path} is gone; still serving generation "
                           f"{self.gen.number}")

    def stop(self, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        now = time.monotonic()
        grace = max(g.config.graceful_timeout for g in self.generations.values())
        self.stopping = now + (grace + KILL_MARGIN if graceful else FAST_STOP)
        self.log.info("graceful stop: draining workers" if graceful else "fast stop")
        for proc in self.procs.values():
            proc.draining_since = proc.draining_since or now
            self._kill(proc, signal.SIGTERM if graceful else signal.SIGQUIT)
        self.listeners.keep_only(set())
        self.status_due = 0.0
        self.report_start(False, "stopped before every worker was ready")
        notify_systemd(b"STOPPING=1\nSTATUS=draining")

    # -- pid file and status -------------------------------------------------------------------
    def _write_info(self) -> None:
        with contextlib.suppress(OSError):
            registry.write_info(run_dir(), {
                "pid": self.pid, "config": self.gen.config.path, "source": self.source,
                "started": self.started, "urls": urls(self.gen.config), "version": __version__})
        self.status_due = 0.0

    def status(self) -> dict:
        return reports.status(self)

    @property
    def admin_url(self) -> str | None:
        if self.admin is None:
            return None
        host, port = self.admin.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def write_status(self) -> None:
        """On any change of a worker's state, else every STATUS_EVERY (for the counters)."""
        now = time.monotonic()
        states = [(p.pid, "draining" if p.draining_since else self.board.read(p.slot).state)
                  for p in sorted(self.procs.values(), key=lambda p: (p.generation, p.wid))]
        if now >= self.status_due or states != self.status_states:
            self.status_due, self.status_states = now + STATUS_EVERY, states
            with contextlib.suppress(OSError):
                registry.write_status(run_dir(), self.pid, self.status())

    # -- admin pages (admin.py serves them from this loop) --------------------------------------
    def _status_page(self) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.status(), indent=2).encode() + b"\n"

    def _metrics_page(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, reports.metrics(self).encode()

    def _ready_page(self) -> tuple[int, str, bytes]:
        if reports.ready(self):
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", f"not ready: {reports.state(self)}\n".encode()

    def cleanup(self) -> None:
        self.listeners.keep_only(set())
        if self.admin is not None:
            self.admin.close()
        with contextlib.suppress(OSError):
            registry.remove(run_dir(), self.pid)


def run_master(config: Config, source: str, workers: int | None, log: MasterLog,
               notify: int | None = None) -> int:
    """Bind, fork the workers and supervise them until stopped."""
    try:
        arbiter = Arbiter(config, source, workers, log)
    except RexError as exc:
        if notify is not None:
            tell(notify, False, str(exc))
        raise
    arbiter.notify = notify
    set_title(f"rex: master [{config.path or 'built-in config'}]")
    try:
        return arbiter.run()
    except RexError as exc:
        arbiter.report_start(False, str(exc))
        raise
    finally:
        arbiter.cleanup()


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
def cmd_init(force: bool) -> int:
    from importlib import resources

    conf = resources.files("rex_conf")
    targets = {CONFIG_NAME: conf / CONFIG_NAME,
               os.path.join("public", "index.html"): conf / "public" / "index.html"}
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not force:
        raise RexError(f"{existing[0]} already exists (use --init --force to overwrite)")
    os.makedirs("public", exist_ok=True)
    for target, source in targets.items():
        with open(target, "wb") as f:
            f.write(source.read_bytes())
        print(f"wrote {target}")
    print("start it with: rex start")
    return EXIT_OK


def cmd_check(path: str | None) -> int:
    path = path or active_config()
    config = load(path)
    routes = sum(len(i.routes) for i in config.instances)
    print(f"{path}: ok ({len(config.instances)} instance(s), {routes} route(s), "
          f"{config.workers} worker(s))")
    return EXIT_OK


def cmd_load(path: str) -> int:
    path = os.path.abspath(path)
    load(path)
    registry.atomic_write(os.path.join(rex_home(), "active"), path + "\n")
    print(f"active config: {path}")
    _reload_followers()
    return EXIT_OK


def cmd_reset() -> int:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(rex_home(), "active"))
    print(f"active config: ./{CONFIG_NAME}")
    _reload_followers()
    return EXIT_OK


def _reload_followers() -> None:
    """Masters started without -c follow the active config: tell them it changed."""
    for info in registry.masters(run_dir()):
        if info.get("source") == "active":
            _signal(info, signal.SIGHUP)
            print(f"reloading master {info['pid']}")


def cmd_start(path: str | None, foreground: bool, workers: int | None) -> int:
    source = "explicit" if path else "active"
    config = load(os.path.abspath(path or active_config()))
    if workers:
        config = replace(config, workers=workers)
    raise_nofile()
    if foreground:
        return run_master(config, source, workers, MasterLog())
    log_path = os.path.join(rex_home(), "rex.log")
    caller, fd = daemonize(log_path)
    if caller:
        ok, text = wait_report(fd)
        if not ok:
            raise RexError(text or "the master exited before it was ready (see `rex log`)")
        print(text)
        return EXIT_OK
    code = EXIT_FAILURE
    try:
        code = run_master(config, source, workers, MasterLog(log_path), fd)
    except RexError as exc:
        MasterLog(log_path).error(str(exc))
    except BaseException:  # the daemon has no caller to raise to: log it, exit non-zero
        traceback.print_exc()
    finally:
        os._exit(code)


def _select(pid: str | None) -> list[dict]:
    found = registry.masters(run_dir())
    if pid is not None:
        found = [m for m in found if str(m["pid"]) == str(pid)]
        if not found:
            raise RexError(f"no running rex master with pid {pid}")
    elif not found:
        raise RexError("no running rex master")
    return found


def _signal(info: dict, sig: int) -> None:
    try:
        os.kill(int(info["pid"]), sig)
    except PermissionError:
        raise RexError(f"no permission to signal master {info['pid']} "
                       "(started by another user?)") from None
    except ProcessLookupError:
        pass  # it exited meanwhile: nothing left to tell it


def cmd_stop(pid: str | None, timeout: float) -> int:
    targets = _select(pid)
    for info in targets:
        _signal(info, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = {int(i["pid"]) for i in targets}
    while waiting:
        waiting = {p for p in waiting if p in {int(m["pid"]) for m in registry.masters(run_dir())}}
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if waiting:
        raise RexError(f"master(s) {', '.join(map(str, sorted(waiting)))} still draining after "
                       f"{timeout:g}s (`kill -QUIT <pid>` stops one at once)")
    for info in targets:
        print(f"stopped master {info['pid']}")
    return EXIT_OK


def cmd_reload(pid: str | None) -> int:
    for info in _select(pid):
        _signal(info, signal.SIGHUP)
        print(f"reloading master {info['pid']} ({info['config']})")
    return EXIT_OK


def cmd_status(as_json: bool) -> int:
    statuses = registry.statuses(run_dir())
    print(json.dumps({"masters": statuses}, indent=2) if as_json
          else registry.format_status(statuses))
    return EXIT_OK


def cmd_log(export: str | None) -> int:
    path = os.path.join(rex_home(), "rex.log")
    if not os.path.exists(path):
        raise RexError(f"no server log yet at {path}")
    if export:
        shutil.copyfile(path, export)
        print(f"exported {path} to {export}")
        return EXIT_OK
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 8192))
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                line = f.readline()
                if line:
                    sys.stdout.write(line.decode("utf-8", "replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.25)
    return EXIT_OK


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def dispatch(args: dict) -> int:
    """docopt's dict to one command; options become typed values here, once."""
    workers = args["--workers"]
    if workers is not None and (not workers.isdigit() or int(workers) < 1):
        raise RexError(f"-w expects a number of workers >= 1, not {workers!r}", EXIT_USAGE)
    try:
        timeout = float(args["--timeout"])
    except ValueError:
        raise RexError(f"--timeout expects seconds, not {args['--timeout']!r}",
                       EXIT_USAGE) from None
    config = None if args["--config"] == "active config" else args["--config"]
    commands = (
        ("--version", lambda: print(f"rex {__version__}") or EXIT_OK),
        ("--init", lambda: cmd_init(args["--force"])),
        ("load", lambda: cmd_load(args["<config>"])),
        ("check", lambda: cmd_check(args["<config>"])),
        ("test", lambda: cmd_check(args["-p"])),
        ("start", lambda: cmd_start(config, args["--foreground"], workers and int(workers))),
        ("stop", lambda: cmd_stop(args["-p"], timeout)),
        ("reload", lambda: cmd_reload(args["-p"])),
        ("status", lambda: cmd_status(args["--json"])),
        ("log", lambda: cmd_log(args["--export"])),
        ("reset", cmd_reset),
    )
    return next(run for name, run in commands if args[name])()


def main(argv: list[str] | None = None) -> int:
    from docopt import DocoptExit, docopt

    try:
        args = docopt(__doc__, argv=argv, version=None)
    except DocoptExit as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        return dispatch(args)
    except RexError as exc:
        print(f"rex: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
