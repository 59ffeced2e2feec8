"""``allow`` / ``deny``: a request-stage rule answering 403 to clients it does not admit.

May: match the client's address (``clientip``) against CIDR lists. May not: touch
sockets or import gevent. Pure.

One rule per scope: a client in ``deny`` is refused; with an ``allow`` list, so
is every client outside it. Verdicts are remembered per address (bounded), so
a busy client costs a dict look-up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from ..http import pages
from ..http.message import Response
from ..http.request import Request

VERDICTS = 4096  # addresses remembered; then the memory starts over


class IPRule:
    def __init__(self, allow: Sequence[str], deny: Sequence[str],
                 client: Callable[[Request], str]) -> None:
        self.allow = tuple(ipaddress.ip_network(c) for c in allow)
        self.deny = tuple(ipaddress.ip_network(c) for c in deny)
        self.client = client
        self._verdicts: dict[str, bool] = {}

    def __call__(self, req: Request) -> Response | None:
        ip = self.client(req)
        admitted = self._verdicts.get(ip)
        if admitted is None:
            if len(self._verdicts) >= VERDICTS:
                self._verdicts.clear()
            admitted = self._verdicts[ip] = self.admits(ip)
        return None if admitted else pages.response(403)

    def admits(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:  # no IP peer (a test's socketpair): no list can name it
            return not self.allow
        if any(addr in net for net in self.deny):
            return False
        return not self.allow or any(addr in net for net in self.allow)
