"""Who the client is, for access rules: the peer, or what trusted proxies say it was.

May: read the peer address and ``X-Forwarded-For`` of a request. May not: touch
sockets or import gevent. Pure; unit-tested on plain requests.

A peer in ``trusted_proxies`` may speak for someone else: its ``X-Forwarded-For``
is read from the right (the hop the trusted proxy itself appended) and the first
address that is not a trusted proxy is the client, as nginx's ``real_ip_recursive``
does. Anything to the left of that could have been written by the client.
"""

from __future__ import annotations

import ipaddress

from ..http.request import Request
from ..proxy.headers import TrustedProxies

_MAPPED = "::ffff:"  # an IPv4 client of a dual-stack (::) listener


def plain(ip: str) -> str:
    """``1.2.3.4`` for ``::ffff:1.2.3.4``: IPv4 rules must match IPv4 clients of ``::``."""
    if ip.startswith(_MAPPED) and "." in ip:
        return ip[len(_MAPPED):]
    return ip


class ClientAddress:
    """``client(req)``: the client's IP as text, honouring ``trusted_proxies``."""

    def __init__(self, trusted: TrustedProxies) -> None:
        self.trusted = trusted

    def __call__(self, req: Request) -> str:
        addr = plain(req.client_addr[0])
        trusted = self.trusted
        if addr not in trusted:
            return addr
        hops: list[bytes] = []
        for name, value in req.headers:
            if name.lower() == b"x-forwarded-for":  # several fields form one list, in order
                hops += value.split(b",")
        for hop in reversed(hops):
            try:
                ip = ipaddress.ip_address(hop.strip().decode("latin-1"))
            except ValueError:
                break  # not an address: the last trusted hop is all that can be believed
            addr = plain(str(ip))
            if addr not in trusted:
                break
        return addr
