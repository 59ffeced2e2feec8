"""Who answers a request: the request stage, then a static file, a route, the global pool,
the SPA fallback or a page.

One ``Listener`` per bound address (several instances may share it as virtual
hosts); one ``Site`` per instance. A request first passes the site's request
stage (rules that may answer it themselves: the HTTPS redirect today; access
rules and limits later), then the original Rex's order (SPEC §4): an existing
file under ``public`` (GET/HEAD) → routes (a proxy, a WSGI app or a ``static:``
directory) → the global ``upstream`` pool → the SPA fallback → 404; with nothing
configured, the welcome page. Every responder
answers through the request's ``Stream``; none of this writes protocol bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.model import Instance, Rules
from ..config.routing import NameTable, RouteTable, VirtualHosts
from ..http import compress, pages
from ..http.headerrules import edit_request
from ..http.message import Filter, RequestRule, Response, Stream
from ..http.redirects import Redirector, Rewriter, slash_redirect
from ..http.request import HTTPError, Request
from ..http.urlpath import normalize
from ..proxy.balancer import UpstreamGroup
from ..proxy.exchange import Proxy
from ..proxy.state import Target
from ..shared.metrics import GLOBAL_POOL
from ..wsgi.host import WSGIApps
from . import frontdoor


class Site:
    """One instance: its static files, routes, request rules and response filters."""

    def __init__(self, instance: Instance, table: RouteTable, proxy: Proxy,
                 global_target: Target | None, wsgi: WSGIApps | None,
                 group: Callable[..., UpstreamGroup],
                 guard: Callable[[Instance, RouteTable], RequestRule | None] | None = None,
                 ) -> None:
        self.instance = instance
        self.table = table
        self.proxy = proxy
        self.wsgi = wsgi
        self.static = None
        if instance.public:
            from rex_static import StaticSite  # only instances with a root need it

            self.static = StaticSite(instance.public, instance.static)
        self.groups: dict[int, UpstreamGroup] = {}
        self.files = {}  # route index -> StaticSite of its static: directory
        # Whose X-Forwarded-* placeholders believe; a site built without a proxy
        # (unit tests of the request stage) believes no one.
        self.trusted = proxy.trusted.__contains__ if proxy is not None else _nobody
        self._front_door(instance)
        for route in instance.routes:
            if route.static:
                from rex_static import StaticSite

                self.files[route.index] = StaticSite(route.static,
                                                     route.static_options or instance.static)
            if route.upstreams:
                self.groups[route.index] = group(route.upstreams, route.balance,
                                                 site=str(instance.index), route=route)
        self.empty = not instance.routes and not instance.public and global_target is None
        # The request stage: each rule may answer the request before dispatch.
        self.rules: tuple[RequestRule, ...] = (
            (RedirectHttps(instance.https_ports),) if instance.redirect_https else ())
        # Access rules (auth, allow, deny: access/guard.py), after the redirect so that
        # credentials are asked for over https; absent, nothing runs for them.
        access = guard(instance, table) if guard is not None else None
        if access is not None:
            self.rules += (access,)
        # The filter stage for this site's responses: the front door's (error pages,
        # security headers, CORS, header rules: ``frontdoor``), then compression, which
        # sees the head and body they leave. A route whose keys differ has its own.
        door_filters = self.door.filters if self.door else ()
        self.filters: tuple[Filter, ...] = door_filters + compress.filters(instance.compress)
        self.route_filters: dict[int, tuple[Filter, ...]] = {
            r.index: (door.filters if door else door_filters) + compress.filters(r.compress)
            for r, door in zip(instance.routes, self.doors, strict=True)
            if door is not None or r.compress != instance.compress}
        # One Target per (route, literal segments matched), built on first use:
        # no allocation per request on the hot path.
        self._targets: dict[tuple[int, int], Target] = {}
        self._global = global_target

    def _front_door(self, instance: Instance) -> None:
        """The front-door keys (``frontdoor.Door``) of the instance and of each route."""
        read = frontdoor.PageFiles()
        levels = (instance.inherited, instance.rules)
        self.door = frontdoor.build(levels, self.trusted, read)
        # Per route (by index): None when the route sets nothing of its own, so the
        # instance's door stands. Request edits of the outer levels ran already.
        self.doors = [frontdoor.build((*levels, r.rules), self.trusted, read, request_from=2)
                      if r.rules != Rules() else None for r in instance.routes]
        self.preflights = any(d is not None and d.cors is not None
                              for d in (self.door, *self.doors))
        self.redirects = {r.index: Redirector(r.redirect, r.path)
                          for r in instance.routes if r.redirect is not None}

    def respond(self, stream: Stream) -> None:
        req = stream.request
        stream.filters = self.filters
        door = self.door
        if door is not None:
            stream.error_pages = door.pages
            if door.request:
                edit_request(door.request, req, self.trusted)
        if self.preflights and req.method == "OPTIONS":
            # A preflight carries no credentials: answered before the rules (auth).
            answer = self._preflight(req)
            if answer is not None:
                stream.respond(answer)
                return
        for rule in self.rules:
            answer = rule(req)
            if answer is not None:
                stream.respond(answer)
                return
        static = self.static
        get = req.method in ("GET", "HEAD")
        if static is not None and get and static.handle(stream):
            return
        match = self.table.match(req.method, req.path)
        if match is not None:
            route = match.route
            stream.outcome.route = route.path
            door = self.doors[route.index]
            if door is not None and self._enter_route(stream, door):
                return
            if route.redirect is not None:
                stream.respond(self.redirects[route.index](req, self.trusted))
                return
            if self.route_filters and route.index in self.route_filters:
                stream.filters = self.route_filters[route.index]
            if route.wsgi:
                self.wsgi.serve(stream, route, match.strip_segments)
                return
            if route.static:
                self._files(stream, route.index, match.strip_segments)
                return
            key = (route.index, match.strip_segments)
            targets = self._targets
            if key in targets:  # ``in`` and a subscript: no call on this path
                target = targets[key]
            else:
                target = targets[key] = Target(
                    self.groups[route.index], route, match.strip_segments, route.timeouts,
                    Rewriter(route) if route.rewrite else None)
            self.proxy.forward(stream, target)
            return
        if self._global is not None:
            stream.outcome.route = GLOBAL_POOL
            self.proxy.forward(stream, self._global)
            return
        if static is not None and get and static.fallback(stream):
            return
        if self.empty:
            stream.respond(pages.response(0))
            return
        exc = (HTTPError("method not allowed", 405) if self.table.allowed(req.path)
               else HTTPError("no route", 404))
        exc.close = False
        raise exc


    def _enter_route(self, stream: Stream, door: frontdoor.Door) -> bool:
        """A route's own front-door keys; True when they answered the request."""
        req = stream.request
        stream.filters = door.filters
        stream.error_pages = door.pages
        if door.slash is not None:
            moved = slash_redirect(req, door.slash)
            if moved is not None:
                stream.respond(moved)
                return True
        if door.request:
            edit_request(door.request, req, self.trusted)
        return False

    def _preflight(self, req: Request) -> Response | None:
        """Rex's answer to a CORS preflight, from the scope of the route it asks about."""
        method = req.header(b"access-control-request-method")
        if method is None or req.header(b"origin") is None:
            return None
        match = self.table.match(method.decode("latin-1").strip(), req.path)
        door = (self.doors[match.route.index] if match else None) or self.door
        return door.cors.preflight(req) if door is not None and door.cors else None

    def _files(self, stream: Stream, index: int, mount_segments: int) -> None:
        """A static: route answers from its directory alone: a file, else a 404 (or 405)."""
        if self.files[index].handle(stream, mount_segments):
            return
        if stream.request.method in ("GET", "HEAD"):
            stream.respond(pages.response(404))
        else:  # RFC 9110 §15.5.6: a 405 lists the methods that would work
            stream.respond(pages.response(405, headers=(("Allow", "GET, HEAD"),)))


def _nobody(address: str) -> bool:
    return False


class RedirectHttps:
    """A request-stage rule: every request goes to the same URL on https (308).

    The port is the TLS instance's for the request's host (``Instance.https_ports``,
    chosen by name as a TLS listener chooses its site), left out when it is 443.
    """

    def __init__(self, ports: tuple[tuple[tuple[str, ...], int], ...]) -> None:
        self.ports = NameTable(ports or (((), 443),))

    def __call__(self, req: Request) -> Response:
        host = req.host  # without its port; an IPv6 literal keeps its brackets
        if not host or any(c in host for c in "\r\n/\\"):
            raise HTTPError("no usable Host to redirect to", 400)
        port = self.ports.select(host)
        authority = host if port == 443 else f"{host}:{port}"
        location = f"https://{authority}{req.target.decode('latin-1')}"
        # 308 keeps the method and body, unlike 301 (RFC 9110 §15.4.9).
        return pages.response(308, b"", headers=(("Location", location),))


class Listener:
    """One bound address: picks the instance (virtual host), then its Site."""

    def __init__(self, address: tuple[str, int], vhosts: VirtualHosts,
                 make_site: Callable[[Instance, RouteTable], Site]) -> None:
        self.address = address
        self.port = address[1]
        self.vhosts = vhosts
        self.sites = {inst.index: make_site(inst, vhosts.table(inst))
                      for inst in vhosts.instances}
        first = vhosts.instances[0]
        self.scheme = first.scheme
        # h2c with prior knowledge beside HTTP/1.1: any plain instance here may ask.
        self.h2c = any(i.http2 == "cleartext" and i.tls is None for i in vhosts.instances)
        self.single = self.sites[first.index] if len(self.sites) == 1 else None

    def respond(self, stream: Stream) -> None:
        """Dispatch one request: the path routing matches, then the site for its Host."""
        req = stream.request
        req.path = normalize(req.raw_path)  # a path that means nothing safe is a 400 here
        site = self.single or self.sites[self.vhosts.select(req.host).index]
        stream.outcome.site = site.instance.index
        site.respond(stream)
