"""Redirect routes, rewrites of the upstream path, and trailing-slash normalisation.

A route with ``redirect: {to, status}`` answers every request itself: its
``Location`` is the template filled for the request (``http.template``), made
safe by ``template.location``. A route's ``rewrite`` is the path (and query)
the upstream receives instead of the one the client sent. ``trailing_slash``
sends a path to its other spelling with a 308.

Pure: no sockets, no gevent.
"""

from __future__ import annotations

from ..config.model import Redirect, Route
from . import pages
from .message import Response
from .request import Request
from .template import Captures, Template, Trusted, encoded_path, location


class Redirector:
    """The responder of a ``redirect:`` route."""

    __slots__ = ("captures", "status", "template")

    def __init__(self, redirect: Redirect, pattern: str) -> None:
        self.captures = Captures(pattern)
        self.template = Template(redirect.to, self.captures.count)
        self.status = redirect.status

    def __call__(self, req: Request, trusted: Trusted) -> Response:
        target = self.template.render(req, trusted, self.captures(req.path))
        return pages.response(self.status, b"", headers=(("Location", location(target)),))


class Rewriter:
    """A route's ``rewrite``: the target (path and query) sent upstream."""

    __slots__ = ("captures", "template", "with_query")

    def __init__(self, route: Route) -> None:
        self.captures = Captures(route.path)
        self.template = Template(route.rewrite or "", self.captures.count)
        # Without a "?" of its own the client's query goes along unchanged (SPEC §4).
        self.with_query = "?" not in self.template.text and not any(
            p == "{uri" for p in self.template.parts)

    def __call__(self, req: Request, trusted: Trusted) -> bytes:
        text = location(self.template.render(req, trusted, self.captures(req.path)))
        target = text.encode("ascii")
        if self.with_query and req.query:
            target += b"?" + req.query
        return target


def slash_redirect(req: Request, mode: str) -> Response | None:
    """``trailing_slash: add`` or ``remove``: a 308 to the path's other spelling, if due.

    ``add`` leaves a last segment with a dot alone (``/app.js`` is a file, not a
    directory); the root "/" is never changed. 308 keeps the method and body.
    """
    path = req.path
    if mode == "add":
        if path.endswith("/") or "." in path.rpartition("/")[2]:
            return None
        path += "/"
    elif path == "/" or not path.endswith("/"):
        return None
    else:
        path = path.rstrip("/") or "/"
    target = encoded_path(path)
    if req.query:
        target += "?" + req.query.decode("latin-1")
    return pages.response(308, b"", headers=(("Location", location(target)),))
