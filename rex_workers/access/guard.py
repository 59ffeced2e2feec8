"""A site's access rules (``auth``, ``allow``, ``deny``) as one request-stage rule.

May: build each scope's rules once per worker from the config, pick the scope for a
request by the route its path matches, and run bcrypt off the event loop. May not:
write responses (the site does, with what a rule returns) or know the connection.

Why by route, and before the static files: rules belong to paths. A route's rules
(its own, or its instance's when it sets none; resolved by the loader) apply to every
request its pattern matches, whoever answers it (a file under ``public`` at that path
too); every other request meets the instance's rules. So ``auth: false`` on ``/health``
opens exactly ``/health``, and ``auth:`` on ``/admin`` closes exactly ``/admin``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from ..config.model import BasicAuth, Instance, Route, Timeouts
from ..config.routing import RouteTable
from ..http.message import RequestRule, Response
from ..http.request import Request
from ..proxy.headers import TrustedProxies
from ..proxy.upstream import ConnectionPool
from .basic import BasicRule
from .clientip import ClientAddress
from .forward import ForwardRule
from .iprules import IPRule

Rules = tuple[RequestRule, ...]


def bcrypt_check(password: bytes, stored: bytes) -> bool:
    import bcrypt  # only workers that check passwords load it

    try:
        return bcrypt.checkpw(password, stored)
    except ValueError:  # a hash this bcrypt refuses: no password matches it
        return False


def off_the_loop(password: bytes, stored: bytes) -> bool:
    """bcrypt in gevent's thread pool: it releases the GIL, so the worker's other
    greenlets keep serving during the ~100 ms a check costs."""
    import gevent

    return gevent.get_hub().threadpool.apply(bcrypt_check, (password, stored))


class Guard:
    """The rule of one site: the rules of the route the request's path matches, else
    the instance's; the first that answers wins (IP rules before auth)."""

    def __init__(self, table: RouteTable, site: Rules, routes: dict[int, Rules]) -> None:
        self.table = table
        self.site = site
        self.routes = routes

    def __call__(self, req: Request) -> Response | None:
        match = self.table.match(req.method, req.path)
        for rule in self.site if match is None else self.routes[match.route.index]:
            answer = rule(req)
            if answer is not None:
                return answer
        return None


class Access:
    """What one worker's access rules share: the client address, the pool, the log."""

    def __init__(self, trusted: TrustedProxies, pool: ConnectionPool, timeouts: Timeouts,
                 header_limit: int, log: Callable[[str], None],
                 verify: Callable[[bytes, bytes], bool] = off_the_loop) -> None:
        self.trusted = trusted
        self.client = ClientAddress(trusted)
        self.pool = pool
        self.timeouts = timeouts
        self.header_limit = header_limit
        self.log = log
        self.verify = verify

    def guard(self, instance: Instance, table: RouteTable) -> Guard | None:
        """The site's rule, or None when nothing in it is guarded (then nothing runs)."""
        if not instance.guarded:
            return None
        made: dict[Hashable, RequestRule] = {}  # a route sharing its instance's rules
        # shares their objects too: one credential cache, one failure budget
        site = self._rules(instance, self.timeouts, made)
        routes = {r.index: self._rules(r, r.timeouts, made) for r in instance.routes}
        return Guard(table, site, routes)

    def _rules(self, scope: Instance | Route, timeouts: Timeouts,
               made: dict[Hashable, RequestRule]) -> Rules:
        rules = []
        if scope.allow or scope.deny:
            key = ("ip", scope.allow, scope.deny)
            if key not in made:
                made[key] = IPRule(scope.allow, scope.deny, self.client)
            rules.append(made[key])
        auth = scope.auth
        if isinstance(auth, BasicAuth):
            if auth not in made:
                made[auth] = BasicRule(auth, self.client, self.verify, self.log)
            rules.append(made[auth])
        elif auth is not None:  # forward auth, with the scope's timeouts
            key = (auth, timeouts.connect, timeouts.read)
            if key not in made:
                made[key] = ForwardRule(auth, self.pool, self.client, self.trusted, timeouts,
                                        self.header_limit)
            rules.append(made[key])
        return tuple(rules)
