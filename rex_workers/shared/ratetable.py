"""Rate and concurrency budgets one node's workers share: tables in shared memory.

The master maps both before forking, like the metrics table, so a limit is one
limit for the node, not one per worker (docs/limits.md).

``RateTable``: GCRA (the generic cell rate algorithm, as in ATM networks and
Redis's redis-cell) keeps one number per budget, its "theoretical arrival
time" (TAT): a request is allowed when ``TAT + interval - burst * interval``
is not in the future, and then moves TAT one ``interval`` on. Budgets are
hashed (a 64-bit fingerprint of the limit and the client key) into a fixed
table of 4-way sets; a set's entries are read and written under one of 64
process-shared semaphores (``multiprocessing.Lock``, created before the fork;
sets share them by index). Taking a free one is an atomic operation in user
space, with no system call: a kernel record lock (``fcntl.lockf``) was tried
first and cost a quarter of a small static request in two system calls
(bench/limits.py). A semaphore is not released when its holder dies, so a
lock held longer than ``STUCK`` (the section takes microseconds, and nothing
in it blocks) is presumed orphaned by a worker killed inside it, and freed.

The table belongs to the master, not to a generation: a reload keeps every
budget whose limit is unchanged (the fingerprint includes the limit's
definition), and a changed limit starts with a full burst. When a set is
full of live budgets, the one nearest to full is replaced: that client gets
a fresh burst early, never a refusal it did not earn.

``InFlightTable``: per generation, a row per configured ``max_in_flight`` and
a counter per scoreboard slot in each row. A worker changes only its own
counter (no lock) and compares the row's sum with the limit; the master
zeroes a dead worker's counters when it reaps it, so a crash leaks nothing.

May: map, lock, read and write these tables. May not: import gevent, know
requests or keys (callers bring fingerprints), talk to Redis.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import multiprocessing
import struct
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b

from ..config.model import Config

SETS = 16384
WAYS = 4
_ENTRY = struct.Struct("<Qd")  # fingerprint (0: free), theoretical arrival time (monotonic)
_SET = WAYS * _ENTRY.size
_EPSILON = 1e-9  # float rounding must not cost a client one request of its burst
_WHOLE_SET = struct.Struct("<" + "Qd" * WAYS)
STRIPES = 64  # locks; sets share them (set index modulo), so few semaphores cover the table
SPINS = 50  # tries (with a pause between) before waiting for a lock in the kernel
STUCK = 0.5  # seconds a lock may stay taken before its holder is presumed dead


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's answer, in seconds; what the 429's fields are made of."""

    allowed: bool
    remaining: int  # requests that could still come at once after this one
    retry_after: float  # 0 when allowed; else when one request will be allowed
    reset: float  # until the whole burst is available again


def gcra(tat: float, now: float, interval: float, burst: int) -> tuple[float | None, Verdict]:
    """The new TAT (None: unchanged, refused) and the verdict for one request at ``now``."""
    tat = max(tat, now)
    new = tat + interval
    allow_at = new - burst * interval
    if allow_at > now + _EPSILON:
        return None, Verdict(False, 0, allow_at - now, tat - now)
    return new, Verdict(True, int((now - allow_at) / interval + _EPSILON), 0.0, new - now)


def fingerprint(text: str) -> int:
    """A stable 64-bit hash (never 0, the free mark), the same in every process and node."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little") or 1


class RateTable:
    """GCRA state of every budget of one node (see the module's text)."""

    def __init__(self, sets: int = SETS, stripes: int = STRIPES) -> None:
        self.sets = sets
        self._map = mmap.mmap(-1, sets * _SET)  # anonymous + MAP_SHARED: survives fork
        context = multiprocessing.get_context("fork")  # the semaphores are shared by fork
        self._locks = [context.Lock() for _ in range(stripes)]
        self.stripes = stripes

    def take(self, key: int, now: float, interval: float, burst: int,
             pause: Callable[[], None] | None = None) -> Verdict | None:
        """Count one request against budget ``key`` (a ``fingerprint``) at ``now``.

        None when it may pass (the common case costs no allocation), else the refusal.
        ``pause`` lets a worker serve its other connections while another worker holds
        the lock (a gevent yield) rather than sleep until then: with one busy budget
        (``key: route``, or one client) the workers meet on the same lock all the time.
        """
        index = key % self.sets
        lock = self._locks[index % self.stripes]
        held = lock.acquire(False) or self._wait(lock, pause)
        try:
            base = index * _SET
            entries = _WHOLE_SET.unpack_from(self._map, base)
            if entries[0] == key:  # most budgets stay in the first place of their set
                offset, tat = base, entries[1]
            else:
                offset, tat = _choose(entries, base, key, now)
            new = max(tat, now) + interval  # gcra() below, without its verdict
            if new - burst * interval <= now + _EPSILON:
                _ENTRY.pack_into(self._map, offset, key, new)
                return None
            return gcra(tat, now, interval, burst)[1]
        finally:
            if held:
                lock.release()

    def _wait(self, lock, pause: Callable[[], None] | None) -> bool:
        """The lock after it was busy; False if it had to be taken from a dead holder."""
        for _ in range(SPINS if pause is not None else 0):
            pause()
            if lock.acquire(False):
                return True
        if lock.acquire(True, STUCK):
            return True
        # Held for STUCK seconds by a section that takes microseconds: its holder was
        # killed inside it. Free it for everyone; this one request goes without it.
        with contextlib.suppress(ValueError):  # another waiter freed it first
            lock.release()
        return False

    def close(self) -> None:
        self._map.close()


def _choose(entries: tuple, base: int, key: int, now: float) -> tuple[int, float]:
    """The place of ``key`` in its set, else the one to take (free, back at full, nearest full)."""
    victim, victim_tat = base, math.inf
    for way in range(WAYS):
        held, tat = entries[2 * way], entries[2 * way + 1]
        offset = base + way * _ENTRY.size
        if held == key:
            return offset, tat
        if held == 0 or tat <= now:  # a budget back at full burst needs no entry
            tat = -math.inf
        if tat < victim_tat:
            victim, victim_tat = offset, tat
    return victim, now


def inflight_rows(config: Config) -> dict[tuple[int, int], int]:
    """Row of each ``max_in_flight``: (instance index, route index, or -1 for the instance)."""
    rows: dict[tuple[int, int], int] = {}
    for inst in config.instances:
        for index, holder in [(-1, inst), *((r.index, r) for r in inst.routes)]:
            if holder.max_in_flight:
                rows[(inst.index, index)] = len(rows)
    return rows


class InFlightTable:
    """Requests in progress under each ``max_in_flight`` of one generation, per worker slot."""

    def __init__(self, config: Config, slots: int) -> None:
        self.rows = inflight_rows(config)
        self.slots = slots
        self._map = mmap.mmap(-1, max(len(self.rows) * slots * 4, 4))
        self._counts = memoryview(self._map).cast("i")

    def enter(self, row: int, slot: int, limit: int) -> bool:
        """Count a request in, unless the row is full. Counted first, then compared, so two
        workers racing for the last place may both refuse, never both get in."""
        counts, start = self._counts, row * self.slots
        counts[start + slot] += 1
        if sum(counts[start:start + self.slots]) > limit:
            counts[start + slot] -= 1
            return False
        return True

    def leave(self, row: int, slot: int) -> None:
        self._counts[row * self.slots + slot] -= 1

    def forget(self, slot: int) -> None:
        """The master's side: a reaped worker's requests are in flight no more."""
        for row in range(len(self.rows)):
            self._counts[row * self.slots + slot] = 0

    def total(self, row: int) -> int:
        return sum(self._counts[row * self.slots:(row + 1) * self.slots])

    def close(self) -> None:
        self._counts.release()
        self._map.close()


@dataclass(frozen=True, slots=True)
class LimitTables:
    """What the limits of one generation's workers share: the node's budgets, its in-flight."""

    rates: RateTable
    inflight: InFlightTable
