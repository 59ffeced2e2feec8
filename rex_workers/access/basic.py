"""HTTP Basic authentication (RFC 7617) against bcrypt hashes, as a request-stage rule.

May: read a request's ``Authorization``, remember verified credentials, count failed
checks per client, answer 401 or 429, and take the credential out of the request once
it passed. May not: import gevent or bcrypt, or touch sockets: the password check itself
is handed in (``verify``; the worker runs bcrypt off the event loop, ``guard.py``).

Why the cache and the budget: bcrypt is slow on purpose (~100 ms of CPU at cost 10).
Checked on every request, a page with twenty assets would cost two seconds of CPU,
and anyone could keep a worker busy by sending Authorization headers. So a credential
that passed is remembered for ``CACHE_SECONDS`` under an HMAC of it (a per-process
random key: the password is never kept, and the table is useless outside this
process), and each client may make at most ``FAILURE_BURST`` failed checks, refilled
at ``FAILURE_RATE`` per second; past that it gets 429 without any check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import os
import time
from collections.abc import Callable

from ..config.model import BasicAuth
from ..http import pages
from ..http.message import Response
from ..http.request import Request, printable

CACHE_SECONDS = 300.0  # how long a verified credential is believed without bcrypt
CACHE_SIZE = 10_000  # credentials remembered per rule and worker; the oldest go first
FAILURE_BURST = 10  # failed checks a client may make at once...
FAILURE_RATE = 10 / 60  # ...and per second after that (ten a minute)
FAILURE_CLIENTS = 10_000  # clients whose failures are counted; the least recent go first
BCRYPT_MAX = 72  # bcrypt reads this many bytes of a password; htpasswd -B does the same


def credentials(value: bytes | None) -> tuple[bytes, bytes, bytes] | None:
    """``(user, password, "user:password")`` of a Basic ``Authorization`` value, or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        pair = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = pair.partition(b":")
    return (user, password, pair) if colon else None


def client_key(ip: str) -> str:
    """Whose failures count together: an IPv4 address, or an IPv6 client's /64 (one host
    usually holds a whole /64, and could pick a new address per attempt)."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    except ValueError:
        return ip


class CredentialCache:
    """Credentials that passed, by keyed hash, each believed until its expiry."""

    def __init__(self, seconds: float = CACHE_SECONDS, size: int = CACHE_SIZE,
                 secret: bytes | None = None) -> None:
        self.seconds = seconds
        self.size = size
        self._secret = secret or os.urandom(32)
        self._until: dict[bytes, float] = {}

    def key(self, pair: bytes) -> bytes:
        return hmac.new(self._secret, pair, hashlib.sha256).digest()

    def fresh(self, key: bytes, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self._until[key]
        return False

    def remember(self, key: bytes, now: float) -> None:
        until = self._until
        until.pop(key, None)
        until[key] = now + self.seconds  # at the end: the dict is oldest first
        if len(until) > self.size:
            del until[next(iter(until))]


class FailureBudget:
    """A token bucket per client: each failed check spends a token (``take`` before the
    check, ``refund`` when it passed, so concurrent attempts cannot all slip through)."""

    def __init__(self, burst: int = FAILURE_BURST, rate: float = FAILURE_RATE,
                 size: int = FAILURE_CLIENTS) -> None:
        self.burst = burst
        self.rate = rate
        self.size = size
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str, now: float) -> float:
        """0 when a check may run (a token is spent), else the seconds until one may."""
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._put(client, tokens, now)
            return (1 - tokens) / self.rate
        self._put(client, tokens - 1, now)
        return 0.0

    def refund(self, client: str) -> None:
        bucket = self._buckets.get(client)
        if bucket is not None:
            self._buckets[client] = (min(self.burst, bucket[0] + 1), bucket[1])

    def _put(self, client: str, tokens: float, now: float) -> None:
        buckets = self._buckets
        buckets[client] = (tokens, now)  # at the end: the dict is least recent first
        if len(buckets) > self.size:
            del buckets[next(iter(buckets))]


class BasicRule:
    """The rule: 401 with a challenge, 429 past the failure budget, else let the request in
    without its ``Authorization`` (the credential is Rex's business, not the upstream's)."""

    def __init__(self, auth: BasicAuth, client: Callable[[Request], str],
                 verify: Callable[[bytes, bytes], bool], log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users = {name.encode(): stored.encode() for name, stored in auth.users}
        # An unknown user is checked against a real hash all the same, so that the
        # answer takes as long as for a known one (no probing for user names).
        self.decoy = next(iter(self.users.values()))
        self.challenge = f'Basic realm="{auth.realm}", charset="UTF-8"'
        self.client = client
        self.verify = verify
        self.log = log
        self.clock = clock
        self.cache = CredentialCache()
        self.failures = FailureBudget()

    def __call__(self, req: Request) -> Response | None:
        found = credentials(req.header(b"authorization"))
        if found is None:
            return self._refuse()
        user, password, pair = found
        key = self.cache.key(pair)
        if self.cache.fresh(key, self.clock()):
            _without_credential(req)
            return None
        ip = self.client(req)
        who = client_key(ip)
        wait = self.failures.take(who, self.clock())
        if wait:
            return pages.response(429, headers=(("Retry-After", str(math.ceil(wait))),))
        stored = self.users.get(user)
        passed = self.verify(password[:BCRYPT_MAX], stored or self.decoy) and stored is not None
        if not passed:
            problem = "unknown user" if stored is None else "wrong password for user"
            self.log(f"basic auth: {problem} {printable(user)} from {ip}")
            return self._refuse()
        self.failures.refund(who)
        self.cache.remember(key, self.clock())
        _without_credential(req)
        return None

    def _refuse(self) -> Response:
        return pages.response(401, headers=(("WWW-Authenticate", self.challenge),))


def _without_credential(req: Request) -> None:
    req.headers[:] = [(k, v) for k, v in req.headers if k.lower() != b"authorization"]
