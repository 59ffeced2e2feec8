"""h2load's command line and output, as data: no process is started here.

h2load (Debian's ``nghttp2-client``) is the HTTP/2 counterpart of wrk. It
runs in count mode (``-n``): in duration mode (``-D``) it counts the streams
still open when time is up as failed, so "no failed streams" could never hold.
``parse`` reads its summary lines::

    finished in 2.00s, 8000.00 req/s, 8.77MB/s
    requests: 16000 total, 16000 started, 16000 done, 16000 succeeded, 0 failed, ...
    status codes: 16000 2xx, 0 3xx, 0 4xx, 0 5xx

and the ALPN line, so a run that fell back to HTTP/1.1 is never taken for an h2 figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(r"^requests: (\d+) total,", re.MULTILINE)
_CODES = re.compile(r"^status codes: (\d+) 2xx,", re.MULTILINE)
_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.MULTILINE)


class H2loadOutputError(ValueError):
    """h2load printed something this module cannot read (it could not connect, say)."""


@dataclass(frozen=True, slots=True)
class H2Result:
    requests: int  # asked for
    succeeded: int
    failed: int  # streams that did not end in a 2xx
    duration: float  # seconds
    protocol: str  # what ALPN chose: "h2" unless the server refused HTTP/2

    @property
    def req_per_s(self) -> float:
        return self.succeeded / self.duration if self.duration else 0.0


def command(h2load: str, url: str, *, connections: int, streams: int, requests: int,
            threads: int = 1) -> list[str]:
    """The argv of one run: ``requests`` in all over ``connections`` connections, at most
    ``streams`` concurrent streams on each."""
    return [h2load, f"--clients={connections}", f"--max-concurrent-streams={streams}",
            f"--requests={requests}", f"--threads={threads}", url]


def parse(output: str) -> H2Result:
    finished, counts, codes = (p.search(output) for p in (_FINISHED, _REQUESTS, _CODES))
    if finished is None or counts is None or codes is None:
        last = output.strip().splitlines()[-1:]
        raise H2loadOutputError(f"no h2load summary in output: {last[0] if last else '(empty)'}")
    number, unit, _rate = finished.groups()
    total = int(counts.group(1))
    ok = int(codes.group(1))
    protocol = _PROTOCOL.search(output)
    # Every stream that did not end in a 2xx failed: reset, timed out, never finished
    # (h2load's own failed/errored/timeout counts), or answered with an error status.
    return H2Result(requests=total, succeeded=ok, failed=total - ok,
                    duration=float(number) * _UNITS[unit],
                    protocol=protocol.group(1) if protocol else "unknown")
