"""The master's policy decisions, kept out of its loop so they read (and test) on their own.

May: hold the master's records of workers and generations, compute restart
delays, word exit statuses, decide from ``stat`` results and file bytes
whether the config changed. May not: fork, signal, sleep, bind
or import gevent; the loop in ``rex.py`` acts on the answers.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from dataclasses import dataclass

from ..config.model import Config
from ..shared.metrics import MetricsTable
from ..shared.ratetable import LimitTables
from ..shared.sharedhealth import HealthTable

BOOT_TIMEOUT = 30.0  # seconds a generation may take to become ready (or `timeout`, if longer)
EARLY_DEATH = 5.0  # a worker dying younger than this counts towards its backoff
BACKOFF_BASE, MAX_BACKOFF = 0.1, 30.0
DEBOUNCE = 0.2  # an edited config must be this old, and unchanged since the last look


@dataclass
class Proc:
    """The master's record of one worker process."""

    pid: int
    slot: int
    wid: int  # 1..workers: a replacement takes over its predecessor's wid
    generation: int
    started: float  # monotonic
    draining_since: float = 0.0  # told to stop (TERM), or recycling on its own
    killed: bool = False  # SIGKILL sent; waiting to reap it

    def __str__(self) -> str:
        return f"worker {self.wid} (pid {self.pid}, gen {self.generation})"


@dataclass
class Generation:
    """The workers of one config; every reload starts the next generation."""

    number: int
    config: Config
    vhosts: dict  # address -> routing.VirtualHosts
    want: int  # workers; TTIN/TTOU change it
    started: float  # monotonic
    ready: bool = False
    metrics: MetricsTable | None = None  # shared memory the master maps before forking
    health: HealthTable | None = None
    limits: LimitTables | None = None


def urls(config: Config) -> list[str]:
    """Where each instance can be reached, as ``rex start`` prints it."""
    found = []
    for inst in config.instances:
        host = "localhost" if inst.host in ("0.0.0.0", "::", "") else inst.host
        found.append(f"{inst.scheme}://{f'[{host}]' if ':' in host else host}:{inst.port}/")
    return found


def boot_limit(config: Config) -> float:
    """Seconds a worker may take to boot: importing a big app may take longer than ``timeout``."""
    return max(BOOT_TIMEOUT, config.timeout)


def backoff_delay(early_deaths: int, rng: random.Random | None = None) -> float:
    """Seconds before respawning a worker that died young ``early_deaths`` times in a row.

    The first early death is replaced at once (a crash is not a pattern yet);
    then 0.1 s doubling up to 30 s, so a worker that cannot run costs a few
    forks a minute, not a fork bomb. ±20% jitter keeps workers that died
    together from respawning in lockstep.
    """
    if early_deaths <= 1:
        return 0.0
    delay = min(MAX_BACKOFF, BACKOFF_BASE * 2 ** (early_deaths - 2))
    return delay * (rng or random).uniform(0.8, 1.2)


class Backoff:
    """Consecutive early deaths per worker slot, and when each may be respawned."""

    def __init__(self) -> None:
        self._slots: dict[tuple[int, int], tuple[int, float]] = {}  # key -> (deaths, due)

    def died(self, key: tuple[int, int], age: float, now: float) -> float:
        """Record a death at ``age`` seconds old; returns the delay before the respawn."""
        deaths = self._slots.get(key, (0, 0.0))[0] + 1 if age < EARLY_DEATH else 0
        delay = backoff_delay(deaths)
        self._slots[key] = (deaths, now + delay)
        return delay

    def delay(self, key: tuple[int, int], seconds: float, now: float) -> None:
        self._slots[key] = (self._slots.get(key, (0, 0.0))[0], now + seconds)

    def due(self, key: tuple[int, int], now: float) -> bool:
        return now >= self._slots.get(key, (0, 0.0))[1]

    def forget(self, generation: int) -> None:
        for key in [k for k in self._slots if k[0] == generation]:
            del self._slots[key]


def describe_exit(status: int) -> str:
    """A ``waitpid`` status in words: "exit code 3", "killed by SIGKILL"."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


Stat = tuple[int, int, int, int, int]


def stat(path: str) -> Stat | None:
    """What identifies the file ``path`` leads to now; ``os.stat`` follows symlinks.

    So a Kubernetes ConfigMap update, which swaps the ``..data`` symlink to a
    new directory rather than writing the file, shows as a new inode (and
    device, should the new target live on another file system).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)


class ConfigWatch:
    """Tells when the config file on disk differs from the one being served.

    Cheap ``stat`` first; only a file that changed *and then stayed unchanged*
    for one look and ``DEBOUNCE`` seconds is read and hashed, because editors
    write in several steps and a half-written file would fail validation.
    A file whose bytes did not change (``touch``, an editor saving the same
    text) does not reload.
    """

    def __init__(self, path: str) -> None:
        self.accept(path)

    def accept(self, path: str) -> None:
        """The file at ``path`` as it is now is being (or was just tried) served."""
        self.applied = self.seen = stat(path)

    def changed(self, path: str, digest: str) -> bool | None:
        """True: reload. False: nothing to do (yet). None: the file is gone (report it once)."""
        st = stat(path)
        if st == self.applied:
            return False
        if st is None:
            self.applied = self.seen = None
            return None
        stable = st == self.seen and time.time() - st[0] / 1e9 >= DEBOUNCE
        self.seen = st
        if not stable:
            return False
        self.applied = st
        try:
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest() != digest
        except OSError:
            return False  # gone between stat and open: the next look reports it
