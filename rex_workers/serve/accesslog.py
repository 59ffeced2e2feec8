"""Access and error log lines of a worker.

One line per request, written with a single ``os.write`` on an ``O_APPEND``
descriptor so lines from several workers never interleave. A failing log (disk
full, file deleted) costs the line, never the request. ``reopen`` serves
SIGUSR1 for log rotation. No gevent here.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ..config.model import Logging
from ..http.message import Outcome
from ..http.request import Request

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _open(target: str | None) -> int | None:
    if target is None:
        return None
    if target == "stdout":
        return sys.stdout.fileno()
    if target == "stderr":
        return sys.stderr.fileno()
    return os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


_stamp_cache: list = [0, ""]


def _local_time(now: float) -> str:
    """``10/Oct/2000:13:55:36 -0700``, formatted at most once a second (hot path)."""
    second = int(now)
    if _stamp_cache[0] == second:
        return _stamp_cache[1]
    _stamp_cache[0] = second
    _stamp_cache[1] = _format_local(second)
    return _stamp_cache[1]


def _format_local(now: float) -> str:
    t = time.localtime(now)
    offset = t.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:"
            f"{t.tm_min:02d}:{t.tm_sec:02d} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}")


def _quote(value: bytes | None) -> str:
    if not value:
        return "-"
    return value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')


REPORT_EVERY = 60.0  # seconds between two reports of a failing access log


class Log:
    def __init__(self, settings: Logging, worker: str = "") -> None:
        self.settings = settings
        self.worker = worker
        self.dropped = 0  # lines lost to a failing log target
        self._access = _open(settings.access)
        # Whether ``access`` writes anything (``reopen`` keeps it so): asked per request.
        self.writes_access = self._access is not None
        self._error = _open(settings.error)
        self._json = settings.format == "json"
        self._info = settings.level in ("debug", "info")
        self._errors = settings.level != "critical"
        self._reported = 0.0  # when a failing access log was last reported (monotonic)

    def reopen(self) -> None:
        for name in ("_access", "_error"):
            fd = getattr(self, name)
            target = self.settings.access if name == "_access" else self.settings.error
            if fd is not None and target not in ("stdout", "stderr"):
                os.close(fd)
                setattr(self, name, _open(target))

    def access(self, req: Request, outcome: Outcome, duration: float) -> None:
        if self._access is None:
            return
        status, sent = outcome.status, outcome.sent
        upstream = outcome.upstream
        urt = outcome.upstream_time
        if self._json:
            line = json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "remote": req.client_addr[0],
                "method": req.method, "target": req.target.decode("latin-1"),
                "version": req.version, "status": status, "bytes": sent,
                "host": req.host, "referer": _quote(req.header(b"referer")),
                "user_agent": _quote(req.header(b"user-agent")), "upstream": upstream,
                "request_time": round(duration, 6),
                "upstream_time": None if urt is None else round(urt, 6),
                "request_id": req.request_id.decode("latin-1"),
            }, separators=(",", ":"))
        else:
            line = (
                f'{req.client_addr[0]} - - [{_local_time(time.time())}] '
                f'"{req.method} {req.target.decode("latin-1")} HTTP/{req.version}" {status} '
                f'{sent} "{_quote(req.header(b"referer"))}" '
                f'"{_quote(req.header(b"user-agent"))}" upstream={upstream} '
                f'rt={duration:.3f} urt={"-" if urt is None else f"{urt:.3f}"} '
                f'rid={req.request_id.decode("latin-1")}'
            )
        self._write(self._access, line)

    def access_raw(self, remote: str, status: int) -> None:
        """A request that never parsed: logged with what we know."""
        if self._access is None:
            return
        if self._json:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "remote": remote,
                               "status": status, "bytes": 0})
        else:
            line = f'{remote} - - [{_local_time(time.time())}] "-" {status} 0 "-" "-"'
        self._write(self._access, line)

    def error(self, message: str) -> None:
        if self._error is None or not self._errors:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._write(self._error, f"{stamp} [error] {self.worker}{message}")

    def info(self, message: str) -> None:
        if self._error is None or not self._info:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._write(self._error, f"{stamp} [info] {self.worker}{message}")

    def _write(self, fd: int, line: str) -> None:
        try:
            os.write(fd, (line + "\n").encode("utf-8", "replace"))
        except OSError as exc:
            # Disk full or the file vanished: losing a log line is better than
            # failing the request it describes; but not in silence.
            self.dropped += 1
            if fd == self._access and fd != self._error:
                self._report(exc)

    def _report(self, exc: OSError) -> None:
        """Say in the error log that access lines are being lost, at most once a minute."""
        now = time.monotonic()
        if self._reported and now - self._reported < REPORT_EVERY:
            return
        self._reported = now
        self.error(f"access log {self.settings.access}: {exc.strerror or exc}; "
                   f"{self.dropped} line(s) dropped so far")
