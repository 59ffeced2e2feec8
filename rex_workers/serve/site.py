"""Who answers a request: static file, route, global pool, SPA fallback or a page.

One ``Listener`` per bound address (several instances may share it as virtual
hosts); one ``Site`` per instance. The order is the original Rex's (SPEC §4):
an existing file under ``public`` (GET/HEAD) → routes → the global ``upstream``
pool → the SPA fallback → 404; with nothing configured, the welcome page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.model import Instance, Route, Timeouts
from ..config.routing import RouteTable, VirtualHosts
from ..http import pages
from ..http.request import HTTPError, Request
from ..proxy.balancer import UpstreamGroup

if TYPE_CHECKING:
    from .conn import ClientConn
    from .runtime import Runtime


@dataclass(frozen=True, slots=True)
class Target:
    """Where the proxy sends one request. Shared by every request to the same route."""

    group: UpstreamGroup
    route: Route | None
    strip_segments: int
    timeouts: Timeouts


class Site:
    def __init__(self, instance: Instance, table: RouteTable, rt: Runtime) -> None:
        self.instance = instance
        self.table = table
        self.static = None
        if instance.public:
            from rex_static import StaticSite  # only instances with a root need it

            self.static = StaticSite(instance.public, instance.static)
        self.groups: dict[int, UpstreamGroup] = {}
        self.apps: dict[int, object] = {}
        for route in instance.routes:
            if route.upstreams:
                self.groups[route.index] = UpstreamGroup(route.upstreams, route.balance)
        self.empty = not instance.routes and not instance.public and not rt.global_group
        # One Target per (route, literal segments matched), built on first use:
        # no allocation per request on the hot path.
        self._targets: dict[tuple[int, int], Target] = {}
        self._global = (Target(rt.global_group, None, 0, rt.timeouts)
                        if rt.global_group is not None else None)

    def respond(self, conn: ClientConn, req: Request) -> tuple[int, int]:
        rt = conn.rt
        if self.instance.redirect_https:
            return _redirect_https(conn, req)
        static = self.static
        get = req.method in ("GET", "HEAD")
        if static is not None and get:
            done = static.handle(conn.sock, req)
            if done is not None:
                return done
        match = self.table.match(req.method, req.path)
        if match is not None:
            route = match.route
            if route.wsgi:
                return rt.wsgi(conn, req, route, match.strip_segments)
            key = (route.index, match.strip_segments)
            target = self._targets.get(key)
            if target is None:
                target = self._targets[key] = Target(self.groups[route.index], route,
                                                     match.strip_segments, route.timeouts)
            return rt.forward(conn, req, target)
        if self._global is not None:
            return rt.forward(conn, req, self._global)
        if static is not None and get:
            done = static.fallback(conn.sock, req)
            if done is not None:
                return done
        if self.empty:
            body = pages.page(0)
            conn.send(pages.response(0, body, keep_alive=conn.keep_alive,
                                     head_only=req.method == "HEAD"))
            return 200, len(body)
        allowed = self.table.allowed(req.path)
        if allowed:
            exc = HTTPError("method not allowed", 405)
            exc.close = False
            raise exc
        exc = HTTPError("no route", 404)
        exc.close = False
        raise exc


def _redirect_https(conn: ClientConn, req: Request) -> tuple[int, int]:
    host = req.host  # without its port; an IPv6 literal keeps its brackets
    if not host or any(c in host for c in "\r\n/\\"):
        raise HTTPError("no usable Host to redirect to", 400)
    location = f"https://{host}{req.target.decode('latin-1')}"
    # 308 keeps the method and body, unlike 301 (RFC 9110 §15.4.9).
    conn.send(pages.response(308, b"", keep_alive=conn.keep_alive,
                             headers=(("Location", location),)))
    return 308, 0


class Listener:
    """One bound address: picks the instance (virtual host), then its Site."""

    def __init__(self, address: tuple[str, int], vhosts: VirtualHosts, rt: Runtime) -> None:
        self.address = address
        self.port = address[1]
        self.vhosts = vhosts
        self.sites = {inst.index: Site(inst, vhosts.table(inst), rt) for inst in vhosts.instances}
        first = vhosts.instances[0]
        self.scheme = first.scheme
        self.single = self.sites[first.index] if len(self.sites) == 1 else None

    def respond(self, conn: ClientConn, req: Request) -> tuple[int, int]:
        site = self.single or self.sites[self.vhosts.select(req.host).index]
        return site.respond(conn, req)
