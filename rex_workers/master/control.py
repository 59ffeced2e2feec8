"""The CLI's side of running masters: which one a command means, telling it, waiting for it.

``rex stop``, ``reload``, ``load`` and ``reset`` reach masters through their pid
files (``registry.py``) and signals. Which masters:

- ``-p PID``: that one. ``rex stop --all``: every one. ``rex reload``: every one
  (each re-reads its own file, so no master changes project).
- otherwise the master **of this directory**: the one serving the config this
  directory resolves to (``rex load``'s record for it, else ./rex.config.yaml),
  else the one started in this directory. Two such masters, or none while
  others run, is refused with the candidates and their ``-p`` pids: acting on
  a master of another project is worse than asking.

``rex reload`` and ``rex load`` wait for the outcome: the master records each
reload in its status file with the time it began (``generations.py``); the
first reload that began after the SIGHUP was sent, and has finished, is the
answer. Waiting is bounded by ``--timeout``; a worker that cannot boot fails a
reload within 30 s (``supervise.BOOT_TIMEOUT``), so the default 60 s covers it.

May: read the registry and the records, write a master's load request, signal
masters, sleep while waiting, print results. May not: import gevent, or read
shared memory (what a master says is in its status file).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from . import active, registry

POLL = 0.05  # seconds between looks at a master's files while waiting for it


class RexError(Exception):
    """A failure the user can act on: printed as one line (or a few), exit code attached.

    ``main`` puts ``rex: `` before each of its lines, one or many (config errors:
    one ``file:line:`` line each).
    """

    def __init__(self, message: str, code: int = 1, logged: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.logged = logged  # already in the master's log: a daemon does not log it again


def several(lines: list[str]) -> RexError:
    return RexError("\n".join(lines))


@dataclass(frozen=True)
class Here:
    """Where a command runs: ``$REX_HOME`` and this directory's config."""

    home: str
    cwd: str
    default: str  # ./rex.config.yaml, absolute: what the directory serves without a record

    @property
    def run(self) -> str:
        return os.path.join(self.home, "run")

    @property
    def config(self) -> str:
        return active.recorded(self.home, self.cwd) or self.default


# -- choosing -------------------------------------------------------------------------------
def of_directory(found: list[dict], config: str, cwd: str) -> list[dict]:
    """The masters ``found`` that belong to this directory: those serving ``config``, else
    those started in ``cwd``. More than one means the caller must ask which."""
    # Resolved, so a path through a symlink and the physical one name the same file.
    config = os.path.realpath(config)
    serving = [m for m in found if os.path.realpath(str(m.get("config", ""))) == config]
    return serving or [m for m in found if m.get("dir") == cwd]


def candidates(found: list[dict]) -> str:
    """One line per master: how to name it with ``-p`` and what it is."""
    return "\n".join(f"  -p {m['pid']}  {m.get('config', '?')}  (started in {m.get('dir', '?')})"
                     for m in found)


def choose(here: Here, pid: str | None, every: bool = False) -> list[dict]:
    """The masters a command acts on; RexError when there is none or it is ambiguous."""
    found = registry.masters(here.run)
    if pid is not None:
        found = [m for m in found if str(m["pid"]) == str(pid)]
        if not found:
            raise RexError(f"no running rex master with pid {pid}")
        return found
    if not found:
        raise RexError("no running rex master")
    if every:
        return found
    mine = of_directory(found, here.config, here.cwd)
    if len(mine) == 1:
        return mine
    if mine:
        raise several([f"{len(mine)} running masters serve {here.config}; say which with -p:",
                       candidates(mine)])
    raise several([f"no running rex master serves {here.config} or was started in "
                   f"{here.cwd}; say which with -p (or --all):", candidates(found)])


# -- telling and waiting ------------------------------------------------------------------------
def send(info: dict, sig: int) -> None:
    try:
        os.kill(int(info["pid"]), sig)
    except PermissionError:
        raise RexError(f"no permission to signal master {info['pid']} "
                       "(started by another user?)") from None
    except ProcessLookupError:
        pass  # it exited meanwhile: waiting for it says so


def ask_reload(run: str, info: dict, config: str | None = None) -> float:
    """SIGHUP master ``info`` (to serve ``config``, if given); the time to wait from."""
    if config is not None:
        registry.request_load(run, int(info["pid"]), config)
    since = time.time()  # the master stamps the reload when it begins: after this
    send(info, signal.SIGHUP)
    return since


def outcome(run: str, pid: int, since: float, timeout: float) -> tuple[bool, str]:
    """Wait for the reload master ``pid`` began after ``since``: (ok, what to say)."""
    deadline = time.monotonic() + timeout
    while True:
        status = registry.read_status(run, pid)
        if status is not None and "last_reload" not in status:  # a master older than this CLI
            return True, f"master {pid}: reloading (it does not report how reloads end)"
        last = status and status["last_reload"]
        if last and last["asked"] >= since and last["result"] != "starting":
            return _said(pid, last, status["generation"])
        if pid not in {int(m["pid"]) for m in registry.masters(run)}:
            return False, f"master {pid} exited before its reload finished"
        if status and status.get("state") == "stopping":
            return False, f"master {pid} is stopping: not reloaded"
        if time.monotonic() > deadline:
            return False, (f"master {pid}: reload still starting after {timeout:g}s "
                           "(`rex status` shows how it ends)")
        time.sleep(POLL)


def _said(pid: int, last: dict, serving: int) -> tuple[bool, str]:
    if last["result"] == "ok":
        return True, f"master {pid}: generation {serving} is serving {last['config']}"
    error = last["error"]  # config errors: one `file:line:` line each, from the next line on
    return False, (f"master {pid}: reload failed; still serving generation {serving}:"
                   + ("\n" if "\n" in error else " ") + error)


def reload_all(run: str, targets: list[dict], timeout: float,
               config: str | None = None) -> list[str]:
    """Reload ``targets`` (onto ``config``, if given) and wait; the failures, if any."""
    waits = []
    for info in targets:
        waits.append((int(info["pid"]), ask_reload(run, info, config)))
        print(f"reloading master {info['pid']} ({config or info['config']})", flush=True)
    deadline = time.monotonic() + timeout
    failures = []
    for pid, since in waits:
        ok, text = outcome(run, pid, since, max(0.0, deadline - time.monotonic()))
        if ok:
            print(text)
        else:
            failures.append(text)
    return failures


def fail(failures: list[str]) -> None:
    if failures:
        raise several(failures)


# -- the commands ----------------------------------------------------------------------------
def stop(here: Here, pid: str | None, every: bool, timeout: float) -> int:
    targets = choose(here, pid, every)
    for info in targets:
        send(info, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = {int(i["pid"]) for i in targets}
    while waiting:
        waiting &= {int(m["pid"]) for m in registry.masters(here.run)}
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    if waiting:
        raise RexError(f"master(s) {', '.join(map(str, sorted(waiting)))} still draining after "
                       f"{timeout:g}s (`kill -QUIT <pid>` stops one at once)")
    for info in targets:
        print(f"stopped master {info['pid']}")
    return 0


def reload(here: Here, pid: str | None, timeout: float) -> int:
    fail(reload_all(here.run, choose(here, pid, every=True), timeout))
    return 0


def switch(here: Here, config: str | None, pid: str | None, timeout: float) -> int:
    """``rex load`` (``config``) and ``rex reset`` (None: back to ./rex.config.yaml).

    This directory's master reloads onto the new config; the record changes only
    once it serves it, so a failed reload leaves everything as it was.
    """
    target = config or here.default
    found = registry.masters(here.run)
    # A wrong -p, or two masters of this directory, is refused before anything changes.
    targets = choose(here, pid) if pid is not None or of_directory(
        found, here.config, here.cwd) else []
    if targets:
        failures = reload_all(here.run, targets, timeout, target)
        fail([*failures, f"the active config stays {here.config}"] if failures else [])
    elif found:  # masters of other directories: not this command's to move
        print(f"no running rex master serves {here.config}: the next `rex start` here "
              "serves the new config")
    if config is None:
        active.forget(here.home, here.cwd)
    else:
        active.record(here.home, here.cwd, config)
    print(f"active config: {config or './' + os.path.basename(here.default)}")
    return 0

