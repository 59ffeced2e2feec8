"""Running masters as recorded on disk: pid files and status snapshots in ``$REX_HOME/run``.

Several masters may run at once (SPEC §2), so each writes ``<pid>.json`` (who it
is: pid, config, start time, URLs) while it runs and ``<pid>.status`` (its
workers, refreshed about once a second); ``rex status``, ``stop``, ``reload``
and ``load`` read them. ``rex load`` leaves ``<pid>.load`` (the config the
master is to serve) before it sends SIGHUP; the master takes it on that HUP.
Files are written atomically (a temporary file, then ``rename``), so a reader
sees the old or the new file, never half of one.

A pid file is stale when its process is gone, or when the pid now belongs to
another process (pids are reused): the recorded process start time must
match ``/proc/<pid>/stat``. Stale files are removed by whoever finds them, so
a ``kill -9``-ed master does not make ``rex stop`` signal a stranger.

Used by the master and the CLI; no gevent, no sockets, no printing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

__all__ = ["atomic_write", "format_status", "masters", "process_start", "read_status", "remove",
           "request_load", "statuses", "take_load", "write_info", "write_status"]


def atomic_write(path: str, data: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so split after its ")".
    return stat.rsplit(")", 1)[1].split()[19]


def write_info(run_dir: str, info: dict) -> None:
    """Record this master (``info`` must hold ``pid``); rewrite it when its config changes."""
    pid = int(info["pid"])
    atomic_write(_path(run_dir, pid, "json"), json.dumps({**info, "start": process_start(pid)}))


def write_status(run_dir: str, pid: int, status: dict) -> None:
    atomic_write(_path(run_dir, pid, "status"), json.dumps(status))


def request_load(run_dir: str, pid: int, config: str) -> None:
    """Ask master ``pid`` to serve ``config`` from its next SIGHUP on (``rex load``)."""
    atomic_write(_path(run_dir, pid, "load"), config)


def take_load(run_dir: str, pid: int) -> str | None:
    """The config a ``rex load`` asked this master to serve, once; None if none asked."""
    path = _path(run_dir, pid, "load")
    try:
        with open(path, encoding="utf-8") as f:
            config = f.read().strip()
        os.unlink(path)
    except OSError:
        return None
    return config or None


def remove(run_dir: str, pid: int) -> None:
    for kind in ("json", "status", "load"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(run_dir, pid, kind))


def masters(run_dir: str) -> list[dict]:
    """Every live master's pid-file record, oldest pid first; stale records are removed."""
    found = []
    for name in sorted(os.listdir(run_dir), key=lambda n: (len(n), n)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(run_dir, name), encoding="utf-8") as f:
                info = json.load(f)
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written by a master right now, or not ours: leave it
        if _alive(pid, info.get("start", "")):
            found.append(info)
        else:
            remove(run_dir, pid)
    return found


def read_status(run_dir: str, pid: int) -> dict | None:
    try:
        with open(_path(run_dir, pid, "status"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def statuses(run_dir: str) -> list[dict]:
    """Each live master's latest status (its pid-file record while it has none yet)."""
    found = []
    for info in masters(run_dir):
        status = read_status(run_dir, int(info["pid"])) or {**info, "workers": []}
        status["uptime"] = round(time.time() - float(status.get("started", time.time())), 3)
        found.append(status)
    return found


def format_status(statuses: list[dict]) -> str:
    """``rex status`` for people: a block per master, a line per worker."""
    if not statuses:
        return "no running rex master"
    lines = []
    for st in statuses:
        lines.append(f"master {st['pid']}  {st.get('state', '?')}  up {_duration(st['uptime'])}"
                     f"  generation {st.get('generation', '?')}  config {st['config'] or '(none)'}")
        lines += [f"  {url}" for url in st.get("urls", [])]
        lines += [f"  worker {w['worker']}  pid {w['pid']}  gen {w['generation']}  "
                  f"{w['state']:<8}  requests {w['requests']}  connections {w['connections']}"
                  for w in st["workers"]]
        lines += [_upstream_line(up) for up in st.get("upstreams", ())]
        if st.get("admin"):
            lines.append(f"  admin {st['admin']}")
        lines += _reload_lines(st.get("last_reload"), st.get("generation", "?"))
    return "\n".join(lines)


def _reload_lines(last: dict | None, serving: object) -> list[str]:
    """The last reload, when it failed: what ``rex reload`` said, for whoever looks later."""
    if not last or last.get("result") != "failed":
        return []
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("finished", 0)))
    error = str(last.get("error", "")).splitlines() or ["(no reason recorded)"]
    head = (f"  last reload failed at {when} ({last.get('why', '?')}, {last.get('config', '?')});"
            f" still serving generation {serving}:")
    return [head, *(f"    {line}" for line in error)]


def _upstream_line(up: dict) -> str:
    """One upstream of the current config: the workers' passive view, then the probes'."""
    where = f"route {up['route']} (site {up['site']})" if up["site"] != "-" else "upstream pool"
    line = (f"  upstream {up['key']}  {where}  up in {up['up_in']}/{up['workers']} workers"
            f"  failures {up['failures']}")
    check = up.get("health_check")
    if check:
        line += f"  health {check['path']}: {check['state']}"
    return line


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists; signalling it will say that it is not ours to signal
    now = process_start(pid)
    return not (start and now and now != start)


def _path(run_dir: str, pid: int, kind: str) -> str:
    return os.path.join(run_dir, f"{pid}.{kind}")
