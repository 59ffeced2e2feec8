"""wrk's command line and output, as data: no process is started here.

wrk is run with ``--latency`` and a small Lua ``done()`` hook that prints one
JSON line with exact counters (microseconds, bytes). ``parse`` reads that
line when present and falls back to wrk's human summary otherwise, whose
numbers are rounded to two decimals in binary units (wrk's "MB" is 2**20).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MARKER = "BENCH-JSON "

# LuaJIT's "%d" may go through a 32-bit int on some builds, and byte counts
# pass 2**31 within seconds at 10 MiB a response, so every number is "%.0f".
DONE_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@MARKER@{"duration_us": %.0f, "requests": %.0f, "bytes": %.0f, ' ..
    '"connect": %.0f, "read": %.0f, "write": %.0f, "timeout": %.0f, ' ..
    '"status": %.0f, "p50_us": %.0f, "p99_us": %.0f}\\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("@MARKER@", MARKER)

ERROR_KINDS = ("connect", "read", "write", "timeout", "status")

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTE_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "PB": 2**50}

_NUMBER = r"([\d.]+)"
_TIME = _NUMBER + r"(us|ms|s|m|h)"
_SIZE = _NUMBER + r"([KMGTP]?B)"
_SUMMARY = re.compile(rf"(\d+) requests in {_TIME}, {_SIZE} read")
_PERCENTILE = re.compile(rf"^\s*(50|99)(?:\.0+)?%\s+{_TIME}\s*$", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkOutputError(ValueError):
    """wrk printed something this module cannot read (e.g. it failed to connect)."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. ``bytes`` counts everything read: headers and bodies."""

    requests: int
    duration: float  # seconds
    bytes: int
    p50_ms: float
    p99_ms: float
    errors: Mapping[str, int] = field(default_factory=dict)  # ERROR_KINDS -> count

    @property
    def req_per_s(self) -> float:
        return self.requests / self.duration

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.duration / 1e6

    @property
    def error_count(self) -> int:
        """Failed requests: socket errors plus responses with status >= 400."""
        return sum(self.errors.values())


def command(wrk: str, url: str, *, connections: int, threads: int, duration: float,
            script: str, headers: Sequence[str] = ()) -> list[str]:
    """The argv for one run; ``script`` is a file holding ``DONE_SCRIPT``; ``headers``
    are request fields (``"Accept-Encoding: gzip"``)."""
    return [wrk, f"--threads={threads}", f"--connections={connections}",
            f"--duration={max(1, round(duration))}s", "--timeout=10s", "--latency",
            *(f"--header={field}" for field in headers), f"--script={script}", url]


def parse(output: str) -> WrkResult:
    """The result of one run from wrk's stdout: the JSON line, else the text."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            return parse_json_line(line[len(MARKER):])
    return parse_text(output)


def parse_json_line(text: str) -> WrkResult:
    try:
        data = json.loads(text)
        return WrkResult(
            requests=int(data["requests"]),
            duration=data["duration_us"] / 1e6,
            bytes=int(data["bytes"]),
            p50_ms=data["p50_us"] / 1e3,
            p99_ms=data["p99_us"] / 1e3,
            errors={kind: int(data[kind]) for kind in ERROR_KINDS},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise WrkOutputError(f"unreadable wrk JSON line {text!r}: {exc}") from None


def parse_text(output: str) -> WrkResult:
    """wrk's own summary (``--latency`` for the percentiles)."""
    summary = _SUMMARY.search(output)
    if summary is None:
        first = output.strip().splitlines()[:1]
        raise WrkOutputError(f"no wrk summary in output: {first[0] if first else '(empty)'}")
    requests, number, unit, size, size_unit = summary.groups()
    percentiles = {p: _seconds(n, u) * 1e3 for p, n, u in _PERCENTILE.findall(output)}
    if set(percentiles) != {"50", "99"}:
        raise WrkOutputError("no latency distribution in wrk output (run it with --latency)")
    errors = dict.fromkeys(ERROR_KINDS, 0)
    socket_errors = _SOCKET_ERRORS.search(output)
    if socket_errors:
        errors.update(zip(ERROR_KINDS[:4], map(int, socket_errors.groups()), strict=True))
    non_2xx = _NON_2XX.search(output)
    if non_2xx:
        errors["status"] = int(non_2xx.group(1))
    return WrkResult(
        requests=int(requests),
        duration=_seconds(number, unit),
        bytes=round(float(size) * _BYTE_UNITS[size_unit]),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        errors=errors,
    )


def _seconds(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]
