"""Who the client is: the peer, or what trusted proxies say it was.

One answer for every part of Rex that asks (access rules, rate-limit keys, the
``{client_ip}`` placeholder): a peer in ``trusted_proxies`` may speak for someone
else, so its ``X-Forwarded-For`` (all its field lines, one list) is read from the
right, the hop the trusted proxy itself appended, and the first address that is
not a trusted proxy is the client, as nginx's ``real_ip_recursive`` does. A hop
that is no address stops the walk: the last trusted hop is all that can be believed.

Pure: a request and a ``trusted(address)`` predicate in, an address out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from .request import Request

_MAPPED = "::ffff:"  # an IPv4 client of a dual-stack (::) listener


def plain(ip: str) -> str:
    """``1.2.3.4`` for ``::ffff:1.2.3.4``: IPv4 rules must match IPv4 clients of ``::``."""
    if ip.startswith(_MAPPED) and "." in ip:
        return ip[len(_MAPPED):]
    return ip


def client_address(req: Request, trusted: Callable[[str], bool]) -> str:
    """The client's IP as text, honouring ``trusted`` proxies (see the module docstring)."""
    addr = plain(req.client_addr[0])
    if not trusted(addr):
        return addr
    hops: list[bytes] = []
    for name, value in req.headers:
        if name.lower() == b"x-forwarded-for":  # several fields form one list, in order
            hops += value.split(b",")
    for hop in reversed(hops):
        try:
            ip = ipaddress.ip_address(hop.strip().decode("latin-1"))
        except ValueError:
            break
        addr = plain(str(ip))
        if not trusted(addr):
            break
    return addr
