"""CORS (``cors:``): preflights answered by Rex, response fields for allowed origins.

The Fetch standard's CORS protocol (fetch.spec.whatwg.org, "CORS protocol"):

- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
  is answered here and never reaches a responder: 204 with the allowed methods
  and headers when the origin is listed, 403 when it is not;
- any other response gets ``Access-Control-Allow-Origin`` naming the request's
  own ``Origin``, only when that origin is listed (``*`` only when the list is
  ``*`` and credentials are off: the config refuses ``*`` with credentials),
  and ``Vary: Origin`` so that a cache keeps one answer per origin. Fields an
  upstream set itself are dropped first: the config's list is the policy.

Pure: no sockets, no gevent.
"""

from __future__ import annotations

from ..config.model import Cors
from . import pages
from .message import BodyTransform, Header, Response
from .request import Request

_OWN = frozenset({b"access-control-allow-origin", b"access-control-allow-credentials",
                  b"access-control-expose-headers"})
_VARY = (b"Vary", b"Origin")


class CorsPolicy:
    """One scope's ``cors:``; also its response filter (``__call__``)."""

    __slots__ = ("any", "credentials", "expose", "headers", "max_age", "methods", "origins")

    def __init__(self, cors: Cors) -> None:
        self.any = "*" in cors.origins
        self.origins = frozenset(o.encode("ascii") for o in cors.origins)
        self.methods = ", ".join(cors.methods).encode("ascii")
        self.headers = None if cors.headers is None else ", ".join(cors.headers).encode()
        self.expose = ", ".join(cors.expose).encode("ascii")
        self.credentials = cors.credentials
        self.max_age = None if cors.max_age is None else b"%d" % cors.max_age

    def allowed(self, origin: bytes | None) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None: not allowed."""
        if not origin:
            return None
        if self.any:
            return b"*" if not self.credentials else None
        origin = origin.strip()
        return origin if origin.lower().rstrip(b"/") in self.origins else None

    def preflight(self, req: Request) -> Response | None:
        """Rex's answer to a CORS preflight, or None when ``req`` is not one."""
        origin = req.header(b"origin")
        if req.method != "OPTIONS" or not origin or \
                req.header(b"access-control-request-method") is None:
            return None
        allow = self.allowed(origin)
        if allow is None:
            return pages.response(403, b"", headers=(("Vary", "Origin"),),
                                  content_type=b"text/plain")
        fields = pages.origin_fields()
        fields += self._fields(allow)
        fields.append((b"Access-Control-Allow-Methods", self.methods))
        # Without a configured list, the headers the browser asks for (the cors
        # package's default): the origin is trusted already.
        asked = req.header(b"access-control-request-headers")
        headers = self.headers if self.headers is not None else asked
        if headers:
            fields.append((b"Access-Control-Allow-Headers", headers))
        if self.max_age is not None:
            fields.append((b"Access-Control-Max-Age", self.max_age))
        return Response(204, fields, b"")

    def _fields(self, allow: bytes) -> list[Header]:
        fields = [(b"Access-Control-Allow-Origin", allow)]
        if allow != b"*":
            fields.append(_VARY)
        if self.credentials:
            fields.append((b"Access-Control-Allow-Credentials", b"true"))
        return fields

    def __call__(self, req: Request, response: Response) -> BodyTransform | None:
        """The filter: the fields of an actual (not preflight) response."""
        if req.method == "OPTIONS" and req.header(b"access-control-request-method"):
            return None  # a preflight: ``preflight`` made this answer whole
        headers = [f for f in response.headers if f[0].lower() not in _OWN]
        allow = self.allowed(req.header(b"origin"))
        if allow is None:
            if not self.any:
                headers.append(_VARY)  # another origin's answer may differ
        else:
            headers += self._fields(allow)
            if self.expose:
                headers.append((b"Access-Control-Expose-Headers", self.expose))
        response.headers = headers
        return None
