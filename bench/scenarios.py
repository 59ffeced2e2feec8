"""What the benchmark measures and the bar each figure must clear: data only.

The scenarios, the files they fetch and the targets from issue 6 live here in
one table so the runner, the report and ``docs/bench.md`` agree. No I/O.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

# The files the backend and both static roots serve, by URL name and size.
FILES = {
    "13b.bin": 13,
    "1k.bin": KIB,
    "64k.bin": 64 * KIB,
    "10m.bin": 10 * MIB,
    "64k.json": 64 * KIB,  # JSON records (lab._json_payload): compressible as an API's are
}

# The compression scenario: both proxies gzip at this level, these types only
# (nginx: gzip_comp_level, gzip_types; Rex: compress.level, compress.types).
GZIP_LEVEL = 5  # Rex's default
GZIP_TYPES = ("application/json",)

REQS = "req/s"
MBPS = "MB/s"  # 10**6 bytes a second, response headers included (wrk counts them)


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on a figure: ``value op bound`` must hold for the row to PASS."""

    op: str  # ">=" or "<="
    bound: float
    unit: str = "x"  # "x": a Rex/nginx ratio; otherwise an absolute unit

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.bound)

    def __str__(self) -> str:
        if self.unit == "x":
            return f"{self.op} {self.bound:.2f}x"
        return f"{self.op} {self.bound:g} {self.unit}"


_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    label: str
    site: str  # "proxy": through the proxy to the backend; "static": from the root;
    # "gzip": through the proxy with gzip on; "wsgi": the WSGI hello app
    path: str
    connections: int
    metric: str  # REQS or MBPS
    target: Target | None = None
    headers: tuple[str, ...] = ()  # request fields wrk sends ("Accept-Encoding: gzip")

    @property
    def size(self) -> int:
        return FILES[self.path.lstrip("/")]


# The WSGI row (issue 18): Rex's ``wsgi:`` route against ``gunicorn -k gevent -w 1``
# (its defaults) serving the same app, ``bench/wsgi_hello.py``; judged on Rex/gunicorn
# req/s and on Rex's own p99.
WSGI_SCENARIO = Scenario("wsgi_hello", "WSGI hello (13 B)", "wsgi", "/", 64, REQS,
                         Target(">=", 2.5))
WSGI_P99_TARGET = Target("<=", 20.0, "ms")
WSGI_APP = "bench.wsgi_hello:app"


# Small bodies measure per-request cost (req/s) with many connections; large
# ones measure the byte pump (MB/s), where 16 connections already fill the
# loopback and more would only add memory and scheduler noise.
SCENARIOS = (
    # Issue 18's targets (issue 6 had 0.40 for the small rows and none for 64 KiB).
    Scenario("proxy_13b", "proxied 13 B", "proxy", "/13b.bin", 64, REQS, Target(">=", 0.45)),
    Scenario("proxy_64k", "proxied 64 KiB", "proxy", "/64k.bin", 64, MBPS, Target(">=", 1.0)),
    Scenario("proxy_10m", "proxied 10 MiB", "proxy", "/10m.bin", 16, MBPS, Target(">=", 1.0)),
    # Both spend their time in zlib: Rex's share of the rest is what the ratio shows.
    Scenario("proxy_64k_gzip", "proxied 64 KiB JSON gzip", "gzip", "/64k.json", 64, REQS,
             Target(">=", 0.80), ("Accept-Encoding: gzip",)),
    Scenario("static_1k", "static 1 KiB", "static", "/1k.bin", 64, REQS, Target(">=", 0.60)),
    Scenario("static_10m", "static 10 MiB", "static", "/10m.bin", 16, MBPS, Target(">=", 0.90)),
)

# Tail latency is judged on the request-rate scenario only, where queueing
# inside the proxy shows; the byte-pump scenarios' latency is transfer time.
P99_SCENARIO = "proxy_13b"
P99_TARGET = Target("<=", 2.0)

# Idle keep-alives are held by the proxy site: a proxy that tied an upstream
# connection (or a buffer) to each client connection would show it here.
IDLE_CONNECTIONS = 10_000
IDLE_SITE = "proxy"
IDLE_PATH = "/13b.bin"
IDLE_TARGET = Target("<=", 100.0, "MB")  # issue 18

# The scenario the bare relay (``bench/relay.py``) is measured on, beside nginx.
FLOOR_SCENARIO = "proxy_13b"

# Python calls per request (``bench/calls.py``): issue 18's aims, absolute counts.
CALLS_TARGETS = {"proxied 13 B": Target("<=", 100.0, "calls"),
                 "static 1 KiB": Target("<=", 50.0, "calls")}

ROUTE_COUNTS = (10, 1000)
ROUTES_TARGET = Target("<=", 2.0)

# HTTP/2 to clients (issue 21): h2load over TLS against nginx (`listen ... ssl http2`)
# and Rex (ALPN h2), one worker each, the same files and backend as the wrk rows.
# Fewer connections than wrk's 64: each carries H2_STREAMS requests at once.
H2_SCENARIOS = (
    Scenario("h2_static_1k", "h2 static 1 KiB", "static", "/1k.bin", 16, REQS,
             Target(">=", 0.35)),
    Scenario("h2_proxy_13b", "h2 proxied 13 B", "proxy", "/13b.bin", 16, REQS,
             Target(">=", 0.35)),
)
H2_STREAMS = 10  # h2load -m: concurrent streams per connection
# h2load runs a count of requests, not a duration (bench/h2load.py says why): this
# many per second of --duration, so a run lasts about a second against nginx here and
# a few against Rex.
H2_REQUESTS_PER_SECOND = 2_500
