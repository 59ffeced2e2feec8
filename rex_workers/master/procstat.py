"""What the kernel says about a process: the ``process_*`` metrics, read from ``/proc``.

The names and meanings are those of Prometheus' client libraries (client_python's
``ProcessCollector``, Go's process collector), so dashboards built for them work:
CPU seconds (user + system), resident and virtual memory, open and maximum file
descriptors, start time.

Why the master reads ``/proc/<pid>/`` of its workers, rather than each worker
publishing its own numbers through the shared metrics table:

- the numbers are the kernel's, true at the moment of the scrape; a worker
  copies its table once per heartbeat, so its figures would be up to a second
  old;
- they stay true when the worker cannot publish: a worker whose hub is blocked
  (spinning on CPU, stuck in a C call) is exactly the one whose CPU and memory
  matter, and it writes nothing until the master kills it;
- nothing on the worker's hot path, no change to the shared layout, and the
  master reads its own ``/proc/self`` the same way.

The cost is paid only per scrape: three small files and one ``listdir`` per
process. Where there is no ``/proc`` (macOS) nothing is reported, as the client
libraries do. ``parse_*`` are pure; ``read`` is the only I/O.

May: read ``/proc``. May not: signal, write, import gevent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"


@dataclass(frozen=True, slots=True)
class Usage:
    """One process's facts; a number the kernel would not tell is None."""

    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    start_time: float  # Unix time
    open_fds: int | None
    max_fds: int | None


def parse_stat(text: str, ticks: int, page: int, boot: float) -> tuple[float, int, int, float]:
    """``/proc/<pid>/stat`` -> (CPU seconds, resident bytes, virtual bytes, start time).

    proc(5): utime and stime (fields 14, 15) and starttime (22) are in clock
    ticks, starttime since boot; vsize (23) is bytes, rss (24) pages. The
    command name (field 2) may hold spaces and parentheses: split after its last ")".
    """
    fields = text.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    utime, stime = int(fields[11]), int(fields[12])
    start, vsize, rss = int(fields[19]), int(fields[20]), int(fields[21])
    return (utime + stime) / ticks, rss * page, vsize, boot + start / ticks


def parse_max_fds(limits: str) -> int | None:
    """The soft "Max open files" of ``/proc/<pid>/limits`` (None when "unlimited")."""
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return int(soft) if soft.isdigit() else None
    return None


def parse_boot_time(stat: str) -> float:
    """The ``btime`` line of ``/proc/stat``: when the machine booted, Unix time."""
    for line in stat.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def read(pid: int, boot: float) -> Usage | None:
    """Process ``pid``'s facts now; None when it is gone (or there is no /proc)."""
    base = f"{PROC}/{pid}"
    try:
        with open(f"{base}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
        if text.rsplit(")", 1)[1].split()[0] == "Z":
            return None  # exited, not reaped yet: it holds no memory or files any more
        cpu, rss, vsize, start = parse_stat(text, _TICKS, _PAGE, boot)
    except (OSError, IndexError, ValueError):
        return None  # exited between the caller's look and ours, or no /proc here
    return Usage(cpu, rss, vsize, start, _count_fds(base), _max_fds(base))


def boot_time() -> float | None:
    try:
        with open(f"{PROC}/stat", encoding="ascii", errors="replace") as f:
            return parse_boot_time(f.read())
    except (OSError, ValueError):
        return None  # no /proc: no process metrics at all


def _count_fds(base: str) -> int | None:
    try:
        return len(os.listdir(f"{base}/fd"))
    except OSError:
        return None  # gone meanwhile, or another user's process: leave the sample out


def _max_fds(base: str) -> int | None:
    try:
        with open(f"{base}/limits", encoding="ascii", errors="replace") as f:
            return parse_max_fds(f.read())
    except OSError:
        return None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
