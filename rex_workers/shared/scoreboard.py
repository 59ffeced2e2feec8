"""The one piece of state master and workers share: a table in shared memory.

The master maps it before forking (anonymous ``MAP_SHARED``), so every worker
sees the same pages. Each worker owns one slot and writes only there: its pid,
state, a heartbeat, counters and, if it cannot boot, the reason. The master
reads slots to find hung workers (SPEC §9), to know when a generation is
ready, and for ``rex status``. A heartbeat in memory rather than a file's
mtime (gunicorn's way) costs no syscall and no disk.

No locks: one writer per slot. A reader may catch a write half done, so it
reads until two reads agree. Heartbeats are ``time.monotonic()``, which on
Linux is one clock for every process and does not jump with the wall clock
or run on during a suspend, so a laptop waking up does not look like every
worker hung at once. No gevent here: the master imports this module.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

SLOTS = 256
SLOT_SIZE = 512
# heartbeat (monotonic), started (wall clock), requests, open connections,
# pid, generation, state, reason length: the doubles first, so they are aligned.
_HEAD = struct.Struct("<ddqqiiii")
REASON_MAX = SLOT_SIZE - _HEAD.size

BOOTING, READY, DRAINING, FAILED = 0, 1, 2, 3
STATE_NAMES = {BOOTING: "booting", READY: "ready", DRAINING: "draining", FAILED: "failed"}

# The exit status of a worker that could not boot (the reason is in its slot).
# gunicorn uses 3 for the same purpose; the master stops and reports it.
BOOT_FAILED = 3


@dataclass(frozen=True, slots=True)
class SlotInfo:
    heartbeat: float
    started: float
    requests: int
    connections: int
    pid: int
    generation: int
    state: int
    reason: str

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "unknown")


class Scoreboard:
    """The master's side: reset a slot before a fork, read any slot."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * SLOT_SIZE)  # anonymous + MAP_SHARED: survives fork

    def reset(self, slot: int, generation: int) -> None:
        """A fresh slot: booting, heartbeat now (boot time counts against ``timeout``)."""
        _HEAD.pack_into(self._map, slot * SLOT_SIZE, time.monotonic(), time.time(), 0, 0, 0,
                        generation, BOOTING, 0)

    def read(self, slot: int) -> SlotInfo:
        off = slot * SLOT_SIZE
        head = _HEAD.unpack_from(self._map, off)
        for _ in range(3):  # a torn read differs from the next one; two equal reads are whole
            again = _HEAD.unpack_from(self._map, off)
            if again == head:
                break
            head = again
        length = min(max(head[7], 0), REASON_MAX)
        reason = bytes(self._map[off + _HEAD.size:off + _HEAD.size + length])
        return SlotInfo(*head[:7], reason.decode("utf-8", "replace"))

    def writer(self, slot: int) -> SlotWriter:
        return SlotWriter(self._map, slot * SLOT_SIZE)


class SlotWriter:
    """A worker's view of its own slot; the only code that writes it after the fork."""

    def __init__(self, shared: mmap.mmap, offset: int) -> None:
        self._map = shared
        self._off = offset

    def _write(self, **changes) -> None:
        fields = list(_HEAD.unpack_from(self._map, self._off))
        for name, value in changes.items():
            fields[_FIELDS[name]] = value
        _HEAD.pack_into(self._map, self._off, *fields)

    def boot(self, pid: int) -> None:
        self._write(pid=pid, heartbeat=time.monotonic())

    def beat(self, requests: int, connections: int, state: int | None = None) -> None:
        changes = {"heartbeat": time.monotonic(), "requests": requests,
                   "connections": connections}
        if state is not None:
            changes["state"] = state
        self._write(**changes)

    def fail(self, reason: str) -> None:
        data = reason.encode("utf-8", "replace")[:REASON_MAX]
        start = self._off + _HEAD.size
        self._map[start:start + len(data)] = data
        self._write(state=FAILED, reason_length=len(data))


_FIELDS = {name: i for i, name in enumerate(
    ("heartbeat", "started", "requests", "connections", "pid", "generation", "state",
     "reason_length"))}
