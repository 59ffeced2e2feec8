"""Host field values and absolute-form authorities: what is a host[:port] (RFC 3986).

RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to
any HTTP/1.1 request message that lacks a Host header field and to any request
message that contains more than one Host header field line or a Host header
field with an invalid field value." The value is ``uri-host [ ":" port ]``
(RFC 9110 §7.2), with the host of RFC 3986 §3.2.2 and the port of §3.2.3.

Pure code over bytes; one compiled expression per value, so it can stand on
the path of every request. Where RFC 3986 allows more than a host name can
mean, the choices (docs/reliability.md):

- reg-name: unreserved, sub-delims and percent-encoded bytes, in labels split
  by dots; an empty label (``a..b``, ``.a``) is refused (no DNS name has one),
  one trailing dot (``example.com.``, a rooted name) is allowed;
- IP literal: a bracketed IPv6 address as ``ipaddress`` reads it (no zone id:
  RFC 6874's ``%25`` form is not for URIs sent to servers), or an ``IPvFuture``
  by its grammar;
- port: digits up to 65535; an empty port (``a:``) is allowed, as RFC 3986
  says it means the scheme's default.
"""

from __future__ import annotations

import ipaddress
import re

_UNIT = rb"(?:[A-Za-z0-9\-_~!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
_REG_NAME = rb"%s+(?:\.%s+)*\.?" % (_UNIT, _UNIT)
_FUTURE = rb"v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+"
_AUTHORITY = re.compile(rb"(?:%s|\[(%s|[0-9A-Fa-f:.]+)\])(?::([0-9]*))?"
                        % (_REG_NAME, _FUTURE))


def authority_error(value: bytes) -> str | None:
    """Why ``value`` (surrounding whitespace removed) is no host[:port]; None if it is one."""
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return "not a host[:port]"
    literal, port = match.groups()
    if literal is not None and literal[:1] not in (b"v", b"V"):
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return "not an IPv6 address in brackets"
    if port:
        digits = port.lstrip(b"0")  # leading zeros are allowed, and no reason to int() 4k digits
        if len(digits) > 5 or (digits and int(digits) > 65535):
            return "port out of range"
    return None


# Host values found valid, with their ``host_only``: a client sends the same Host on
# every request, and judging it is a pure function of its bytes. Bounded: once full,
# new values are judged each time (a flood of names cannot grow it).
VALID_HOSTS: dict[bytes, str] = {}
_VALID_HOSTS_MAX = 256


def valid_host(value: bytes) -> str | None:
    """``host_only(value)`` when ``value`` is a valid host[:port], else None; remembered
    for the next request in ``VALID_HOSTS`` (look there first: that is no call)."""
    if authority_error(value) is not None:
        return None
    host = host_only(value)
    if len(VALID_HOSTS) < _VALID_HOSTS_MAX:
        VALID_HOSTS[value] = host
    return host


def host_only(value: bytes) -> str:
    """The host of a valid value, lower-cased, without its port; IPv6 keeps its brackets."""
    h = value.lower()
    if h[:1] == b"[":
        return h[: h.index(b"]") + 1].decode("ascii")
    return h.partition(b":")[0].decode("ascii")
