"""Where rate budgets are kept: this node's shared memory, or Redis for several nodes.

``LocalStore`` counts in the master's ``RateTable`` (one budget per node).
``RedisStore`` runs one Lua script per check (GCRA, as ``ratetable.gcra``,
with Redis's own clock so the nodes' clocks need not agree), so nodes behind
one load balancer share one budget. When Redis cannot answer, ``on_store_error``
decides: ``local`` counts on this node meanwhile, ``allow`` lets requests
through, ``deny`` refuses them (503). A failure is logged once, Redis is
left alone for ``RETRY`` seconds (so requests do not each wait for a
timeout), and its return is logged too.

May: talk to Redis (the optional ``redis`` package, through sockets gevent has
patched: the worker patches when a Redis store is configured), read the
clocks. May not: know requests or responses (``guard.py`` does).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config.model import RateLimit, RateLimits
from ..shared.ratetable import RateTable, Verdict, fingerprint

KEY_CACHE = 10_000  # fingerprints a worker keeps rather than hashing every request
RETRY = 1.0  # seconds between attempts to reach a Redis that failed
TIMEOUT = 0.25  # seconds Redis may take to connect or answer before it counts as down
PREFIX = "rex:rl:"  # Redis key prefix, so a shared Redis shows whose keys these are
NO_PACKAGE = ("the redis package is not installed (pip install 'rex-proxy[redis]'); "
              "rate_limits.store {url} is not used")
DENY = Verdict(False, 0, RETRY, RETRY)

# KEYS[1]: the budget; ARGV: interval and burst. Times in whole microseconds, which a
# Lua double holds exactly (a float of seconds since 1970 would lose them); "%.0f"
# writes them back without the 14-digit rounding of Lua's tostring.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + interval
local allow_at = new - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), 0, new - now}
"""


class LocalStore:
    """Budgets in this node's shared memory. ``take``: None when the request may pass."""

    def __init__(self, table: RateTable, pause: Callable[[], None] | None = None) -> None:
        self.table = table
        self.pause = pause
        self._keys: dict[str, int] = {}  # budget name -> fingerprint, for the busy ones

    def take(self, budget: str, limit: RateLimit) -> Verdict | None:
        key = self._keys.get(budget)
        if key is None:
            if len(self._keys) >= KEY_CACHE:
                self._keys.clear()  # a crude bound: hashing again is all it costs
            key = self._keys[budget] = fingerprint(budget)
        return self.table.take(key, time.monotonic(), limit.interval, limit.burst, self.pause)


class RedisStore:
    """Budgets in Redis, shared by every node that names the same store."""

    def __init__(self, settings: RateLimits, local: LocalStore, log: Callable[[str], None]) -> None:
        self.url = settings.store
        self.policy = settings.on_store_error
        self.local = local
        self.log = log
        self.down_until = 0.0  # monotonic; while in the future, Redis is not asked
        self.failing = False
        try:
            import redis
        except ImportError:
            self.script = None
            log(NO_PACKAGE.format(url=self.url) + f"; on_store_error: {self.policy} applies")
            return
        self.errors = (redis.RedisError, OSError)
        client = redis.Redis.from_url(self.url, socket_timeout=TIMEOUT,
                                      socket_connect_timeout=TIMEOUT)
        self.script = client.register_script(SCRIPT)

    def take(self, budget: str, limit: RateLimit) -> Verdict | None:
        if self.script is None or time.monotonic() < self.down_until:
            return self.fallback(budget, limit)
        key = PREFIX + f"{fingerprint(budget):016x}"  # a header's value is not stored as is
        try:
            allowed, remaining, retry_us, reset_us = self.script(
                keys=[key], args=[limit.interval * 1e6, limit.burst])
        except self.errors as exc:
            self.down_until = time.monotonic() + RETRY
            if not self.failing:
                self.failing = True
                self.log(f"rate_limits.store {self.url} failed ({exc}); "
                         f"on_store_error: {self.policy} until it answers")
            return self.fallback(budget, limit)
        if self.failing:
            self.failing = False
            self.log(f"rate_limits.store {self.url} answers again")
        return None if allowed else Verdict(False, int(remaining), retry_us / 1e6,
                                             reset_us / 1e6)

    def fallback(self, budget: str, limit: RateLimit) -> Verdict | None:
        if self.policy == "local":
            return self.local.take(budget, limit)
        return None if self.policy == "allow" else DENY


def make_store(settings: RateLimits, table: RateTable, log: Callable[[str], None],
               pause: Callable[[], None] | None = None) -> LocalStore | RedisStore:
    local = LocalStore(table, pause)
    return local if settings.store == "local" else RedisStore(settings, local, log)
