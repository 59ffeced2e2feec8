"""Which upstream gets the next request: balancing algorithms and upstream groups.

Pure policy (SPEC §6): no sockets, no gevent, and time comes from an injected
``clock``, so every rule here is tested without sleeping. One ``UpstreamGroup``
exists per route (and one for the global ``upstream`` pool) in each worker
process; its state is that worker's alone, as with nginx without ``zone``.

An algorithm is one class in ``BALANCERS``: built with the slots of one tier
(the primaries, or the backups) and asked to ``pick`` among the live ones.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Protocol

from ..config.model import Upstream
from .health import PassiveHealth

# Points on the ip_hash ring per unit of weight: ketama's and nginx's
# `hash ... consistent` number, enough for shares within a few percent.
RING_POINTS = 160


@dataclass(slots=True, eq=False)
class Peer:
    """Live state of one upstream server, shared by every entry with its key."""

    health: PassiveHealth
    active_up: bool = True  # the health-check prober's verdict
    conns: int = 0  # requests in flight from this worker

    def available(self, now: float) -> bool:
        return self.active_up and self.health.available(now)


@dataclass(frozen=True, slots=True)
class Slot:
    """One configured entry: its position in its tier, its address and its server's state."""

    index: int
    upstream: Upstream
    peer: Peer = field(compare=False)

    @property
    def weight(self) -> int:
        return self.upstream.weight


def _lighter(a: Slot, b: Slot) -> bool:
    """True if ``a`` has fewer connections per unit of weight than ``b`` (no floats)."""
    return a.peer.conns * b.weight < b.peer.conns * a.weight


# ------------------------------------------------------------------ algorithms


class Balancer(Protocol):
    """What every entry of ``BALANCERS`` is: built once per tier, asked once per attempt."""

    def __init__(self, slots: Sequence[Slot], rng: random.Random) -> None: ...

    def pick(self, live: Sequence[Slot], client_ip: str) -> Slot:
        """One of ``live`` (never empty; a subset of the tier's slots, in their order)."""


class RoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a.

    Every live slot gains its weight; the richest is picked and pays the total.
    Over any run of sum(weights) picks each slot gets exactly its share, spread
    out instead of in bursts. Slots that are down or excluded simply sit out.
    """

    def __init__(self, slots: Sequence[Slot], rng: random.Random) -> None:
        self._current = [0] * len(slots)

    def pick(self, live: Sequence[Slot], client_ip: str) -> Slot:
        current = self._current
        total = 0
        best = live[0]
        for slot in live:
            current[slot.index] += slot.weight
            total += slot.weight
            if current[slot.index] > current[best.index]:
                best = slot
        current[best.index] -= total
        return best


class LeastConn:
    """Fewest requests in flight per unit of weight; ties go round robin (as nginx)."""

    def __init__(self, slots: Sequence[Slot], rng: random.Random) -> None:
        self._tie_break = RoundRobin(slots, rng)

    def pick(self, live: Sequence[Slot], client_ip: str) -> Slot:
        best = [live[0]]
        for slot in live[1:]:
            if _lighter(slot, best[0]):
                best = [slot]
            elif not _lighter(best[0], slot):
                best.append(slot)
        return best[0] if len(best) == 1 else self._tie_break.pick(best, client_ip)


class IPHash:
    """Consistent hashing of the client address on a ring of weighted virtual nodes.

    Each upstream owns ``RING_POINTS * weight`` points placed by hashing its key,
    so adding or removing one moves only the clients on its arcs (about 1/n of
    them) and the order of the list does not matter. A client whose upstream is
    down or excluded walks on clockwise to the next live one, and returns when
    it recovers. blake2b, not ``hash()``: the ring must be the same in every
    worker and every Rex node behind the same load balancer.
    """

    def __init__(self, slots: Sequence[Slot], rng: random.Random) -> None:
        ring = sorted((_hash64(f"{slot.upstream.key}#{n}"), slot.index)
                      for slot in slots for n in range(RING_POINTS * slot.weight))
        self._points = [point for point, _ in ring]
        self._owners = [index for _, index in ring]

    def pick(self, live: Sequence[Slot], client_ip: str) -> Slot:
        by_index = {slot.index: slot for slot in live}
        owners = self._owners
        start = bisect_right(self._points, _hash64(client_ip))
        for step in range(len(owners)):
            slot = by_index.get(owners[(start + step) % len(owners)])
            if slot is not None:
                return slot
        return live[0]  # unreachable while every weight is >= 1


def _hash64(text: str) -> int:
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big")


class PowerOfTwo:
    """``random``: two distinct upstreams drawn by weight, the less loaded one wins.

    Mitzenmacher's "power of two choices": nearly least_conn's balance without
    its herd behaviour when many workers see the same counts (nginx's
    ``random two least_conn``).
    """

    def __init__(self, slots: Sequence[Slot], rng: random.Random) -> None:
        self._rng = rng

    def pick(self, live: Sequence[Slot], client_ip: str) -> Slot:
        if len(live) == 1:
            return live[0]
        choices = self._rng.choices
        first = choices(live, weights=[s.weight for s in live])[0]
        rest = [s for s in live if s is not first]
        second = choices(rest, weights=[s.weight for s in rest])[0]
        return second if _lighter(second, first) else first


# "weighted" is an alias: weights always count in round_robin (nginx's default).
BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "weighted": RoundRobin,
    "least_conn": LeastConn,
    "ip_hash": IPHash,
    "random": PowerOfTwo,
}


# ------------------------------------------------------------------ the group


class UpstreamGroup:
    """The upstreams of one route in one worker: choice, load and health.

    The proxy calls ``choose`` (again with ``exclude`` to retry elsewhere), then
    ``acquire``/``release`` around the attempt (``take`` is the first two in one call)
    and ``failed``/``succeeded`` with its outcome. Backups form a second tier used
    only when no primary can take the request; when every upstream is down
    ``choose`` returns None at once.
    """

    def __init__(self, upstreams: Sequence[Upstream], balance: str = "round_robin",
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 on_failure: Callable[[Upstream], None] | None = None) -> None:
        try:
            algorithm = BALANCERS[balance]
        except KeyError:
            raise ValueError(f"unknown balance {balance!r}; one of {', '.join(BALANCERS)}")
        self.upstreams = tuple(upstreams)
        self.balance = balance
        self._clock = clock
        self._on_failure = on_failure  # told of every failed attempt (the worker counts them)
        rng = rng or random.Random()
        # nginx: a group of one server never marks it down. There is nowhere
        # else to send the request, and a dev server restarting behind Rex must
        # not cost fail_timeout seconds of 502s once it is back.
        lone = len(self.upstreams) == 1
        self._peers: dict[str, Peer] = {}
        for up in self.upstreams:
            if up.key not in self._peers:
                health = PassiveHealth(0 if lone else up.max_fails, up.fail_timeout)
                self._peers[up.key] = Peer(health)
        self._tiers: list[tuple[tuple[Slot, ...], Balancer]] = []
        for backup in (False, True):
            members = [up for up in self.upstreams if up.backup is backup]
            if members:
                slots = tuple(Slot(i, up, self._peers[up.key]) for i, up in enumerate(members))
                self._tiers.append((slots, algorithm(slots, rng)))
        # A group of one: never marked down passively (above), so only the prober's
        # verdict and ``exclude`` can rule it out; ``choose`` needs no clock for it.
        self._lone: Slot | None = self._tiers[0][0][0] if lone else None
        # Whether a success can change anything: only an upstream that can be marked
        # down (max_fails above 0) is brought back by one. The proxy asks first.
        self.passive = any(peer.health.max_fails for peer in self._peers.values())

    def choose(self, client_ip: str = "", exclude: Collection[str] = ()) -> Upstream | None:
        """The upstream for the next attempt, or None when nothing live is left to try."""
        lone = self._lone
        if lone is not None:
            up = lone.upstream
            return up if lone.peer.active_up and up.key not in exclude else None
        now = self._clock()
        for slots, algorithm in self._tiers:
            live = [s for s in slots if s.peer.available(now) and s.upstream.key not in exclude]
            if live:
                # One live choice is the choice, whatever the algorithm (the common
                # case of a route with one upstream): no need to ask it.
                slot = live[0] if len(live) == 1 else algorithm.pick(live, client_ip)
                slot.peer.health.chosen(now)
                return slot.upstream
        return None

    def take(self, client_ip: str = "", exclude: Collection[str] = ()) -> Upstream | None:
        """``choose``, then ``acquire`` what it chose: the proxy's one call per attempt."""
        lone = self._lone
        if lone is not None:  # ``choose`` for a group of one, written out
            up = lone.upstream
            if not lone.peer.active_up or up.key in exclude:
                return None
            lone.peer.conns += 1
            return up
        up = self.choose(client_ip, exclude)
        if up is not None:
            self._peers[up.key].conns += 1
        return up

    def acquire(self, up: Upstream) -> None:
        self._peers[up.key].conns += 1

    def release(self, up: Upstream) -> None:
        peer = self._peers[up.key]
        peer.conns = peer.conns - 1 if peer.conns > 0 else 0

    def failed(self, up: Upstream) -> bool:
        """An attempt failed before a response; True when that took ``up`` out of rotation."""
        if self._on_failure is not None:
            self._on_failure(up)
        return self._peers[up.key].health.failed(self._clock())

    def succeeded(self, up: Upstream) -> None:
        """Record a successful exchange (a no-op unless ``passive``)."""
        self._peers[up.key].health.succeeded(self._clock())

    def set_active_health(self, key: str, up: bool) -> None:
        """The prober's verdict for ``key``; keys of other groups are ignored."""
        peer = self._peers.get(key)
        if peer is None:
            return
        if up and not peer.active_up:
            peer.health.reset()  # a passing probe streak is a better trial than one request
        peer.active_up = up

    def state(self) -> list[dict]:
        """One entry per configured upstream, for ``rex status`` and ``/metrics``."""
        now = self._clock()
        rows = []
        for up in self.upstreams:
            peer = self._peers[up.key]
            rows.append({
                "key": up.key, "url": up.url, "up": peer.available(now),
                "active_up": peer.active_up, "fails": peer.health.fails,
                "down_for": round(peer.health.down_for(now), 3), "conns": peer.conns,
                "weight": up.weight, "backup": up.backup,
            })
        return rows
