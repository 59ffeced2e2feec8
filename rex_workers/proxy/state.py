"""What one proxied request carries through its attempts: where it goes, how far it got.

``Target`` is a route's destination as the proxy sees it (shared by every
request to the route); ``Exchange`` is one request's state, read and written by
the forwarding loop (``exchange``), the upload greenlet and the ``Relay`` of
each attempt. Plain state: no sockets, no gevent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from ..config.model import Route, Timeouts, Upstream
from ..http.message import Stream
from ..http.request import HTTPError, Request
from ..http.urlpath import PATH_SAFE
from . import headers
from .balancer import UpstreamGroup
from .headers import TrustedProxies


@dataclass(frozen=True, slots=True)
class Target:
    """Where the proxy sends one request. Shared by every request to the same route."""

    group: UpstreamGroup
    route: Route | None
    strip_segments: int
    timeouts: Timeouts
    # The route's ``rewrite`` (``http.redirects.Rewriter``): (request, trusted) -> target.
    rewrite: Callable[[Request, Callable[[str], bool]], bytes] | None = None


class Exchange:
    """State of one request on its way through (possibly several) upstreams."""

    __slots__ = (
        "body_flowing",
        "body_started",
        "req",
        "responded",
        "stream",
        "target",
        "trusted",
        "up",
        "upload_error",
        "uploading",
        "upstream_end",
    )

    def __init__(self, stream: Stream, target: Target, trusted: TrustedProxies) -> None:
        self.stream = stream
        self.trusted = trusted  # whose X-Forwarded-* say what the client used
        self.req = stream.request
        self.target = target
        self.up: Upstream | None = None
        self.body_started = False  # a byte of a streamed body was taken from the client
        self.body_flowing = False  # the uploader greenlet is still moving the body
        self.responded = False  # the response head was handed to the client
        self.upload_error: HTTPError | None = None  # the client's body failed
        self.uploading = False  # a streamed body is still on its way
        self.upstream_end = 0.0  # when the last attempt's upstream was done with

    def location(self, value: bytes) -> bytes:
        """``Location`` as the client should see it (SPEC §5); only called when present."""
        up, req, target = self.up, self.req, self.target
        base = up.base_path.encode()
        strip = target.strip_segments
        route = target.route
        if strip and ((route and route.strip_prefix) or base):
            segments = req.path.split("/")[1:strip + 1]
            prefix = quote("/" + "/".join(segments), safe=PATH_SAFE).encode()
        else:
            prefix = b"" if base else None
        return headers.rewrite_location(value, headers.upstream_origins(up), base,
                                        headers.public_origin(req, self.trusted), prefix)
