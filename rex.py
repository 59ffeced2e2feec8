"""Rex: reverse proxy, load balancer and static file server.

Usage:
  rex --init [--force]
  rex load <config> [-p <pid>] [--timeout S]
  rex check [<config>] [--json]
  rex test [-p <config>]
  rex config [<config>]
  rex start [-c <config>] [-f] [-w N]
  rex proxy --from <addr> --to <upstream>... [-w N]
  rex serve [<dir>] [--listen <addr>] [--browse] [-w N]
  rex wsgi <app> [--bind <addr>] [-w N] [--reload] [--static <map>]... [--user <name>]
  rex stop [-p <pid> | --all] [--timeout S]
  rex reload [-p <pid>] [--timeout S]
  rex status [--json]
  rex log [-e <file>]
  rex reset
  rex --version
  rex -h | --help

Commands:
  --init        write ./rex.config.yaml and ./public/index.html (refuses to
                overwrite without --force)
  load          validate <config>, make it this directory's active config; the
                master serving this directory's config reloads onto it
  check, test   validate a config (default: the active one), load its
                certificates, import its WSGI apps, resolve its upstreams
  config        print the effective config, every default filled in (YAML)
  start         start a master and its workers; returns once every worker is
                ready and prints the URLs (-f: stay in the foreground)
  proxy         one-liner (foreground): a reverse proxy to the --to upstreams
  serve         one-liner: a static file server for <dir> (default: .)
  wsgi          one-liner: the WSGI app <app> (module:app), as gunicorn would
  stop          graceful stop of this directory's master (-p PID: that one,
                --all: every one)
  reload        re-read the config without dropping a request (= SIGHUP);
                every master, or the one with -p PID
  status        masters and their workers
  log           follow the server log (-e: export it to <file>)
  reset         forget the config `rex load` recorded for this directory; its
                master reloads onto ./rex.config.yaml

Options:
  -c <config>, --config <config>  config file [default: active config]
  -f, --foreground                do not daemonize; log to stdout/stderr
  -w N, --workers N               number of workers (overrides the config)
  -p <pid>                        a master's pid (stop/reload/load), or the
                                  config path (test)
  --all                           stop every running master
  --timeout S                     seconds `stop` waits for masters to exit,
                                  `reload`/`load` for the outcome [default: 60]
  --force                         overwrite existing files with --init
  --json                          machine-readable status or check
  --from <addr>                   proxy: listen on :PORT, HOST:PORT, [::1]:PORT
  --to <upstream>                 proxy: an upstream (several are balanced)
  --listen <addr>                 serve: listen address [default: :8000]
  --browse                        serve: list directories without an index
  --bind <addr>                   wsgi: listen address [default: :8000]
  --reload                        wsgi: reload when a .py file changes
  --static <map>                  wsgi: serve /PREFIX=DIR as static files
  --user <name>                   wsgi: the workers' account (root: as root on purpose)
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
from functools import partial

from rex_workers.cli import CommandError
from rex_workers.config.model import Config
from rex_workers.master import control, registry, reports
from rex_workers.master.admin import AdminServer
from rex_workers.master.control import RexError
from rex_workers.master.daemon import MasterLog, daemonize, notify_systemd, tell, wait_report
from rex_workers.master.exposition import Retired
from rex_workers.master.generations import Generations, Refused
from rex_workers.master.listeners import BindError, Listeners, raise_nofile
from rex_workers.master.supervise import Backoff, Generation, Proc, boot_limit, describe_exit, urls
from rex_workers.shared.boot import WorkerBoot
from rex_workers.shared.metrics import Shared
from rex_workers.shared.proctitle import set_title
from rex_workers.shared.scoreboard import BOOTING, DRAINING, FAILED, Scoreboard

__version__ = "0.1.0"

# ---------------------------------------------------------------------------
# Exit codes and constants
# ---------------------------------------------------------------------------
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
CONFIG_NAME = "rex.config.yaml"
TICK = 0.2  # the loop's longest sleep: heartbeats and deadlines are checked this often
KILL_MARGIN = 5.0  # a drain overrunning graceful_timeout by this much gets SIGKILL
FAST_STOP = 2.0  # INT/QUIT: seconds before workers that did not exit get SIGKILL
STATUS_EVERY = 1.0  # the status file is rewritten on every change and at least this often


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
    """The config `rex load` recorded for this directory, else ./rex.config.yaml."""
    return here().config  # `-c` is the caller's


def here() -> control.Here:
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        cwd = os.environ.get("PWD", "/")  # deleted meanwhile: its name is all that is left
    return control.Here(rex_home(), cwd, os.path.join(cwd, CONFIG_NAME))


def config_file(path: str | None) -> str | None:
    """``path``, else the active config; None when there is no file at all (built-in config)."""
    if path:
        return path
    active = active_config()
    return None if active == os.path.abspath(CONFIG_NAME) and not os.path.exists(active) \
        else active


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

    def __init__(self, config: Config, source: str, workers: int | None, log: MasterLog,
                 looked_for: str | None = None) -> None:
        self.pid = os.getpid()
        self.looked_for = looked_for  # the file not found at start (built-in config)
        self.version = __version__
        self.source = source  # "explicit" (-c) or "active": how the config was chosen
        self.override = workers  # -w N wins over the config's `workers`, on reloads too
        self.log = log
        self.notify: int | None = None  # daemon: the pipe `rex start` waits on
        self.board = Scoreboard()
        self.free_slots = list(range(self.board.slots))
        self.procs: dict[int, Proc] = {}
        self.signals: list[int] = []
        self.listeners = Listeners(config.reuse_port)
        self.admin: AdminServer | None = None
        try:
            self.generations = Generations(self, config)  # binds the first generation's ports
        except Refused as exc:
            raise RexError(str(exc)) from None
        self.backoff = Backoff()
        self.stopping = 0.0  # monotonic deadline of a stop; 0 while running
        self.restarts = 0
        self.retired = Retired()  # counters of workers that have exited (metrics.py)
        self.started = time.time()
        self.dir = here().cwd  # where it was started: whose `rex stop` it answers (control.py)
        self.status_due = 0.0
        self.status_states: list = []

    def admin_for(self, config: Config) -> None:
        """Open, move or close the admin listener as the config says (before the switch)."""
        address = (config.admin.host, config.admin.port) if config.admin else None
        if self.admin is not None and self.admin.address == address:
            return
        new = None
        if address is not None:
            # admin.py serves them from this loop; reports.py writes what they say.
            pages = {"/status": partial(reports.status_page, self),
                     "/metrics": partial(reports.metrics_page, self),
                     "/ready": partial(reports.ready_page, self),
                     "/live": lambda: (200, "text/plain", b"ok\n")}
            try:
                new = AdminServer(address, pages, self.log.error)
            except BindError as exc:
                raise Refused(str(exc)) from None
        if self.admin is not None:
            self.admin.close()
        self.admin = new

    def config_path(self) -> str:
        """The file reloads re-read: the one served (`rex load` names another with its HUP);
        with the built-in config, the file looked for at start (`rex --init` writes it)."""
        return self.generations.current.config.path or self.looked_for

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        self.pipe_r, self.pipe_w = os.pipe()
        for fd in (self.pipe_r, self.pipe_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.pipe_w, warn_on_full_buffer=False)
        self.signums = {getattr(signal, f"SIG{name}") for name in self.SIGNALS}
        for signum in self.signums:
            signal.signal(signum, lambda signum, frame: self.signals.append(signum))
        self.write_info()
        while True:
            self._sleep(TICK)
            while self.signals:
                getattr(self, f"handle_{signal.Signals(self.signals.pop(0)).name[3:].lower()}")()
            self.reap()
            if self.generations.boot_error:
                self._abort_boot()  # before manage(), which would fork a replacement
            self.murder()
            self.manage()
            if self.stopping and not self.procs:
                return EXIT_OK
            if not self.stopping:
                self.generations.poll_config()
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
        if not self.stopping:
            path = registry.take_load(run_dir(), self.pid)  # left by `rex load`, if it sent this
            self.generations.reload("rex load" if path else "SIGHUP", path)

    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_int(self) -> None:
        self.stop(graceful=False)

    handle_quit = handle_int

    def handle_ttin(self) -> None:
        self.generations.grow()

    def handle_ttou(self) -> None:
        self.generations.shrink()  # manage() drains the worker with the highest wid

    def handle_usr1(self) -> None:
        self.log.reopen()
        self.log.info("log files reopened (SIGUSR1)")
        self.generations.hand_over_logs()  # workers that dropped root reopen them next
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
        gen.limits.inflight.forget(proc.slot)  # its requests in flight ended with it
        self.free_slots.append(proc.slot)
        self.status_due = 0.0
        if proc.draining_since or self.stopping or info.state == DRAINING:
            # Told to stop, or it drained on its own (max_requests) before murder() saw it.
            self.log.info(f"{proc} exited ({describe_exit(status)})")
            return
        self.restarts += 1
        failed = info.state == FAILED
        reason = info.reason if failed else f"{proc} died ({describe_exit(status)})"
        if failed and not gen.ready:
            self.generations.failed(gen, reason)  # a reload is given up, or `rex start` fails
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
            elif info.state == BOOTING and silent > boot_limit(config):
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
        for gen in self.generations.active():
            self._spawn_missing(gen)
        self.generations.check_ready()
        current = self.generations.current
        for proc in self.workers(current.number):
            if proc.wid > current.want:
                self.drain(proc)  # TTOU: the highest wids leave
        self.generations.close_unused(self.procs.values())
        for number in self.generations.retire({p.generation for p in self.procs.values()}):
            self.backoff.forget(number)

    def workers(self, number: int) -> list[Proc]:
        """Generation ``number``'s workers that are not draining."""
        return [p for p in self.procs.values() if p.generation == number and not p.draining_since]

    def _spawn_missing(self, gen: Generation) -> None:
        running = {p.wid for p in self.workers(gen.number)}
        now = time.monotonic()
        for wid in range(1, gen.want + 1):
            if wid not in running and self.backoff.due((gen.number, wid), now):
                self.spawn(gen, wid)

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
                          shared=Shared(slot, gen.metrics, gen.health, gen.limits))
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

    def drain(self, proc: Proc) -> None:
        proc.draining_since = time.monotonic()
        self.status_due = 0.0
        self._kill(proc, signal.SIGTERM)

    # -- start and stop ----------------------------------------------------------------------
    def report_start(self, ok: bool, text: str) -> None:
        """Tell a waiting `rex start` (daemon mode) whether we are serving; once."""
        if self.notify is not None:
            tell(self.notify, ok, text)
            self.notify = None

    def _abort_boot(self) -> None:
        """The first generation cannot start: stop its workers and fail `rex start`."""
        reason = self.generations.boot_error
        self.log.error(f"{reason}; rex is stopping: the first generation cannot start")
        now = time.monotonic()
        for proc in self.procs.values():
            proc.draining_since = proc.draining_since or now  # reaped as stopped, not died
            self._kill(proc, signal.SIGKILL)
        while self.procs and time.monotonic() < now + FAST_STOP:
            self._sleep(0.05)
            self.reap()
        self.log.error("rex stopped: it could not start serving")
        raise RexError(reason, logged=True)

    def stop(self, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        now = time.monotonic()
        grace = max(g.config.graceful_timeout for g in self.generations)
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
    def write_info(self) -> None:
        config = self.generations.current.config
        with contextlib.suppress(OSError):
            registry.write_info(run_dir(), {
                "pid": self.pid, "config": config.path, "source": self.source, "dir": self.dir,
                "started": self.started, "urls": urls(config), "version": __version__})

    def write_status(self) -> None:
        """On any change of a worker's state, else every STATUS_EVERY (for the counters)."""
        now = time.monotonic()
        states = [self.generations.snapshot()]
        states += [(p.pid, "draining" if p.draining_since else self.board.read(p.slot).state)
                   for p in sorted(self.procs.values(), key=lambda p: (p.generation, p.wid))]
        if now >= self.status_due or states != self.status_states:
            self.status_due, self.status_states = now + STATUS_EVERY, states
            with contextlib.suppress(OSError):
                registry.write_status(run_dir(), self.pid, reports.status(self))

    def cleanup(self) -> None:
        self.listeners.keep_only(set())
        if self.admin is not None:
            self.admin.close()
        with contextlib.suppress(OSError):
            registry.remove(run_dir(), self.pid)


def run_master(config: Config, source: str, workers: int | None, log: MasterLog,
               notify: int | None = None, looked_for: str | None = None) -> int:
    """Bind, fork the workers and supervise them until stopped."""
    try:
        arbiter = Arbiter(config, source, workers, log, looked_for)
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
def cmd_load(path: str, pid: str | None, timeout: float) -> int:
    path = os.path.abspath(path)
    load(path)
    return control.switch(here(), path, pid, timeout)


def cmd_start(path: str | None, foreground: bool, workers: int | None) -> int:
    from rex_workers.cli.starter import builtin_config

    source, found = "explicit" if path else "active", config_file(path)
    looked_for = None if found else active_config()
    config = load(os.path.abspath(found)) if found else builtin_config(looked_for)
    if workers:
        config = replace(config, workers=workers)
    raise_nofile()
    if foreground:
        return run_master(config, source, workers, MasterLog(), looked_for=looked_for)
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
        code = run_master(config, source, workers, MasterLog(log_path), fd, looked_for)
    except RexError as exc:
        if not exc.logged:
            MasterLog(log_path).error(str(exc))
    except BaseException:  # the daemon has no caller to raise to: log it, exit non-zero
        traceback.print_exc()
    finally:
        os._exit(code)


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
        try:
            shutil.copyfile(path, export)
        except OSError as exc:
            raise RexError(f"cannot export the log to {export}: {exc.strerror}") from None
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
def dispatch(args: dict, argv: list[str]) -> int:
    """docopt's dict to one command; options become typed values here, once."""
    from rex_workers.cli import check, oneliners, show, starter

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
        ("--init", lambda: starter.init(CONFIG_NAME, args["--force"])),
        ("load", lambda: cmd_load(args["<config>"], args["-p"], timeout)),
        ("check", lambda: check.run(config_file(args["<config>"]), args["--json"], active_config)),
        ("test", lambda: check.run(config_file(args["-p"]), False, active_config)),
        ("config", lambda: show.run(config_file(args["<config>"]), active_config)),
        ("start", lambda: cmd_start(config, args["--foreground"], workers and int(workers))),
        *((kind, partial(oneliners.run, kind, args, workers and int(workers), argv, run_dir,
                         partial(cmd_start, foreground=True, workers=None)))
          for kind in oneliners.KINDS),
        ("stop", lambda: control.stop(here(), args["-p"], args["--all"], timeout)),
        ("reload", lambda: control.reload(here(), args["-p"], timeout)),
        ("status", lambda: cmd_status(args["--json"])),
        ("log", lambda: cmd_log(args["--export"])),
        ("reset", lambda: control.switch(here(), None, None, timeout)),
    )
    return next(run for name, run in commands if args[name])()


def main(argv: list[str] | None = None) -> int:
    from docopt import DocoptExit, docopt

    from rex_workers.cli.usage import explain

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = docopt(__doc__, argv=argv, version=None)
    except DocoptExit as exc:
        print(explain(__doc__, argv, str(exc)), file=sys.stderr)
        return EXIT_USAGE
    try:
        return dispatch(args, argv)
    except (RexError, CommandError) as exc:
        print("\n".join(f"rex: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
