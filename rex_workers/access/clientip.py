"""Who the client is, for access rules: ``http.clientaddr`` bound to ``trusted_proxies``.

May: read the peer address and ``X-Forwarded-For`` of a request. May not: touch
sockets or import gevent.
"""

from __future__ import annotations

from ..http.clientaddr import client_address, plain
from ..http.request import Request
from ..proxy.headers import TrustedProxies

__all__ = ["ClientAddress", "plain"]


class ClientAddress:
    """``client(req)``: the client's IP as text, honouring ``trusted_proxies``."""

    def __init__(self, trusted: TrustedProxies) -> None:
        self.trusted = trusted
        self._trusted = trusted.__contains__

    def __call__(self, req: Request) -> str:
        return client_address(req, self._trusted)
