"""The request stage's limits: ``rate_limit`` (429) and ``max_in_flight`` (503) of one site.

A ``Guard`` wraps a site's dispatch when the instance or one of its routes has
a limit (a site without any never builds one: nothing runs per request). It
finds the route the request would take (the route's own limit wins over the
instance's, key by key), counts the request against its rate budget, then
holds a place among the requests in flight until the response is done. It
wraps the dispatch rather than being one of ``Site.rules`` because a place in
flight must be given back when the response ends. Limits run before the other
rules, as nginx's limit_req and limit_conn run before its access phase: a
flood is refused before anything checks credentials for it.

The 429 carries ``Retry-After`` (RFC 9110 §10.2.3, whole seconds, rounded
up) and the IETF ``RateLimit-Policy`` / ``RateLimit`` fields
(draft-ietf-httpapi-ratelimit-headers): the policy's quota ``q`` is the burst,
its window ``w`` the seconds the burst takes to come back; ``r`` is what is
left and ``t`` the seconds until all of it is.

May: read the request's address and fields, answer through the ``Stream``.
May not: write protocol bytes, import gevent, know where budgets are kept
(``store.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from ..config.model import Instance, RateLimit
from ..config.routing import RouteTable
from ..http import pages
from ..http.clientaddr import client_address
from ..http.message import Response, Stream
from ..http.request import Request
from ..shared.ratetable import InFlightTable, Verdict
from .store import DENY, LocalStore, RedisStore

Dispatch = Callable[[Stream], None]


class Rate:
    """One configured ``rate_limit`` and the name of its budgets (the same on every node)."""

    def __init__(self, limit: RateLimit, name: str) -> None:
        self.limit = limit
        # The definition is part of the name: a reload that changes the limit starts afresh.
        self.name = f"{name}|{limit.count}/{limit.period:g}|{limit.burst}|{limit.key}|"
        self.header = (limit.key[len("header:"):].encode()
                       if limit.key.startswith("header:") else None)
        window = math.ceil(limit.burst * limit.interval)
        self.policy = f'"rex";q={limit.burst};w={window}'


class Guard:
    """A site's limits around its dispatch (see the module's text)."""

    def __init__(self, instance: Instance, table: RouteTable, store: LocalStore | RedisStore,
                 inflight: InFlightTable, slot: int, client_ip: Callable[[Request], str],
                 dispatch: Dispatch) -> None:
        site = str(instance.index)
        self.match = table.match
        self.store = store
        self.client_ip = client_ip
        self.dispatch = dispatch
        self.inflight = inflight
        self.slot = slot
        self.rate = instance.rate_limit and Rate(instance.rate_limit, site)
        self.flight = self._flight(instance.index, -1, instance.max_in_flight)
        self.rates = {r.index: Rate(r.rate_limit, f"{site}|{r.path}")
                      for r in instance.routes if r.rate_limit}
        self.flights = {r.index: self._flight(instance.index, r.index, r.max_in_flight)
                        for r in instance.routes if r.max_in_flight}
        self.by_route = bool(self.rates or self.flights)

    def _flight(self, site: int, route: int, limit: int | None) -> tuple[int, int] | None:
        return (self.inflight.rows[(site, route)], limit) if limit else None

    def respond(self, stream: Stream) -> None:
        req = stream.request
        index = -1
        if self.by_route:  # only routes with limits of their own need the route found
            match = self.match(req.method, req.path)
            if match is not None:
                index = match.route.index
                stream.outcome.route = match.route.path  # a refusal counts under its route
        rate = self.rates.get(index, self.rate)
        if rate is not None:
            refused = self.store.take(rate.name + self.key(rate, req), rate.limit)
            if refused is not None:
                stream.outcome.note = f"rate limit {rate.limit.count}/{rate.limit.period:g}s"
                stream.respond(unavailable() if refused is DENY else too_many(rate, refused))
                return
        flight = self.flights.get(index, self.flight)
        if flight is None:
            self.dispatch(stream)
            return
        row, limit = flight
        if not self.inflight.enter(row, self.slot, limit):
            stream.outcome.note = f"max_in_flight {limit}"
            stream.respond(unavailable())
            return
        try:
            self.dispatch(stream)
        finally:
            self.inflight.leave(row, self.slot)

    def key(self, rate: Rate, req: Request) -> str:
        """Whose budget: the client's address, a field's value, or the route's one."""
        if rate.header is not None:
            value = req.header(rate.header)
            # Without the field a request counts as its address: leaving it out is no way
            # around the limit.
            return "h:" + value.decode("latin-1") if value is not None else self.client_ip(req)
        return "" if rate.limit.key == "route" else self.client_ip(req)


def too_many(rate: Rate, verdict: Verdict) -> Response:
    retry = max(1, math.ceil(verdict.retry_after))
    reset = max(1, math.ceil(verdict.reset))
    return pages.response(429, headers=(
        ("Retry-After", str(retry)), ("RateLimit-Policy", rate.policy),
        ("RateLimit", f'"rex";r={verdict.remaining};t={reset}')))


def unavailable() -> Response:
    return pages.response(503, headers=(("Retry-After", "1"),))


def client_ip(trusted: Callable[[str], bool]) -> Callable[[Request], str]:
    """The client's address as the other rules see it (``http.clientaddr``)."""
    return partial(client_address, trusted=trusted)
