"""Header policy for both directions of a proxied exchange.

Pure functions: from a client request to the bytes of the head sent upstream,
and from an upstream response to the end-to-end fields the client gets (the
connection adds framing). They remove hop-by-hop fields (RFC 9110 §7.6.1), add
forwarding fields (X-Forwarded-*, ``Via`` per §7.6.3), handle ``Max-Forwards``
(§7.6.2) and rewrite ``Location``. No sockets, no gevent; unit-tested on plain data.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from functools import lru_cache

from ..config.model import Upstream
from ..http.fieldnames import LOWER as _LOWER
from ..http.h1read import Response
from ..http.message import Header
from ..http.pages import http_date
from ..http.request import Request

# RFC 9110 §7.6.1 plus the de-facto Proxy-Connection; Transfer-Encoding and
# Content-Length are set by Rex from the parsed framing, never copied.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding",
    b"upgrade", b"trailer", b"content-length",
})
# Fields a client may only set through a trusted proxy (``trusted_proxies``):
# anyone else could claim any address or scheme. ``Forwarded`` (RFC 7239) is
# the standard spelling of the same claims.
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-forwarded-port", b"forwarded"})
# Names request_head treats specially; every other field is copied as it came.
# X-Request-ID is Rex's: the request's own id (a trusted proxy's, or made by Rex) goes.
_REQUEST_SPECIAL = HOP_BY_HOP | FORWARDING | {b"host", b"via", b"expect", b"max-forwards",
                                              b"x-request-id"}
# X-Accel-Buffering is an upstream's word to the proxy (nginx's), not for the client;
# the connection returns the request's X-Request-ID itself.
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"via", b"location", b"date", b"x-accel-buffering",
                                  b"x-request-id"}
_VIA = {"1.1": b"1.1 rex", "1.0": b"1.0 rex", "2.0": b"2.0 rex"}  # RFC 9110 §7.6.3
# RFC 9110 §9.3.8: the final recipient of a TRACE leaves out what may be secret.
_TRACE_HIDDEN = frozenset({b"authorization", b"proxy-authorization", b"cookie"})
DEFAULT_ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"

# Request lines and forwarding values as bytes, without an encode per request.
_METHODS = {m: m.encode() for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                    "OPTIONS", "TRACE")}
_SCHEMES = {"http": b"http", "https": b"https"}

_PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade",
                               b"Upgrade"})
_NONE: frozenset[bytes] = frozenset()


def connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-cased field names listed in ``Connection`` (RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)


def _tokens(value: bytes, handled: frozenset[bytes]) -> frozenset[bytes]:
    """Names one ``Connection`` value lists beyond those already handled (usually none)."""
    if value in _PLAIN_CONNECTION:
        return _NONE  # the common case, without splitting
    tokens = frozenset(t.strip().lower() for t in value.split(b","))
    return tokens - handled - {b""}


class TrustedProxies:
    """Whose ``X-Forwarded-*`` fields are believed (CIDR list from the config)."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        self._nets = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    @lru_cache(maxsize=1024)  # noqa: B019 - one instance per worker, bounded cache
    def __contains__(self, ip: str) -> bool:
        if not self._nets or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self._nets)


def host_header(up: Upstream) -> bytes:
    """``Host`` for a request to ``up``: the port only when it is not the default."""
    default = 443 if up.scheme == "https" else 80
    host = f"[{up.host}]" if ":" in up.host else up.host
    value = (host if up.port == default else f"{host}:{up.port}").encode()
    if len(_HOSTS) < 1024:  # the config's upstreams: a bound that is never reached
        _HOSTS[up.key] = value
    return value


# ``host_header`` by ``Upstream.key``, which fixes scheme, host and port: a look-up
# per request instead of hashing the Upstream (a Python call, as lru_cache does).
_HOSTS: dict[str, bytes] = {}


def public_origin(req: Request, trusted: TrustedProxies) -> bytes:
    """scheme://host the client used; a trusted proxy's X-Forwarded-* win (SPEC §5)."""
    proto, host = req.scheme.encode(), req.header(b"host")
    if req.client_addr[0] in trusted:
        proto = (req.header(b"x-forwarded-proto") or proto).split(b",")[0].strip()
        host = (req.header(b"x-forwarded-host") or host or b"").split(b",")[0].strip()
    return proto + b"://" + host if host else b""


def request_head(
    req: Request,
    target: bytes,
    up: Upstream,
    *,
    preserve_host: bool,
    trusted: bool,
    websocket: bool,
    length: int | None,
    chunked: bool,
    listed: frozenset[bytes] = _NONE,
) -> bytes:
    """The head Rex sends upstream for ``req`` (always HTTP/1.1, keep-alive).

    ``length`` and ``chunked`` frame the body as Rex sends it, which may differ
    from how it came (a buffered chunked body goes with its length). ``listed``:
    the names ``Connection`` listed (the second pass, rare).

    Every request passes here: the loop looks names up (``_LOWER``) and adds to
    lists in place rather than calling, and the fixed lines come from tables.
    """
    found = listed
    method = req.method
    out = [_METHODS[method] if method in _METHODS else method.encode(), b" ", target,
           b" HTTP/1.1\r\n"]
    xff = via = orig_host = b""
    proto = fwd_host = fwd_port = None
    for name, value in req.headers:
        lname = _LOWER[name] if name in _LOWER else name.lower()
        if lname not in _REQUEST_SPECIAL:
            if not listed or lname not in listed:
                out += (name, b": ", value, b"\r\n")
            continue
        if lname == b"host":
            orig_host = value
        elif lname == b"connection":
            if value not in _PLAIN_CONNECTION:
                found = found | _tokens(value, _REQUEST_SPECIAL)
        elif lname == b"via":
            via = value if not via else via + b", " + value
        elif lname == b"max-forwards":
            out += (name, b": ", _decrement(value, method), b"\r\n")
        elif lname in FORWARDING and trusted:
            if lname == b"x-forwarded-for":
                xff = value if not xff else xff + b", " + value
            elif lname == b"x-forwarded-proto":
                proto = value
            elif lname == b"x-forwarded-host":
                fwd_host = value
            elif lname == b"x-forwarded-port":
                fwd_port = value
            else:
                out += (name, b": ", value, b"\r\n")  # Forwarded: kept as it came
        # Everything else here is hop-by-hop, untrusted forwarding data, or
        # Expect, which Rex answers itself (see handler): not forwarded.
    if found and not listed:
        # Rare: Connection names end-to-end fields, which must go too. One more pass
        # beats scanning for Connection ahead of every request.
        return request_head(req, target, up, preserve_host=preserve_host, trusted=trusted,
                            websocket=websocket, length=length, chunked=chunked, listed=found)
    client_ip = req.client_addr[0].encode()
    scheme = req.scheme
    key = up.key
    version = req.version
    via_rex = _VIA[version] if version in _VIA else b"1.1 rex"  # noqa: SIM401 - no call
    out += (b"Host: %s\r\nX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (
        orig_host if preserve_host and orig_host
        else _HOSTS[key] if key in _HOSTS else host_header(up),
        xff + b", " + client_ip if xff else client_ip,
        proto or (_SCHEMES[scheme] if scheme in _SCHEMES else scheme.encode())),)
    if fwd_host or orig_host:
        out += (b"X-Forwarded-Host: ", fwd_host or orig_host, b"\r\n")
    out += (b"X-Forwarded-Port: ", fwd_port or b"%d" % req.server_port, b"\r\n",
            b"Via: ", via + b", " + via_rex if via else via_rex, b"\r\n")
    if req.request_id:
        out += (b"X-Request-ID: ", req.request_id, b"\r\n")
    if websocket:
        out += (b"Connection: upgrade\r\nUpgrade: websocket\r\n",)
    if chunked:
        out += (b"Transfer-Encoding: chunked\r\n",)
    elif length is not None:
        out += (b"Content-Length: %d\r\n" % length,)
    out += (b"\r\n",)
    return b"".join(out)


def _decrement(value: bytes, method: str) -> bytes:
    """RFC 9110 §7.6.2: a proxy decrements Max-Forwards on TRACE and OPTIONS only."""
    if method not in ("TRACE", "OPTIONS") or not value.strip().isdigit():
        return value
    return b"%d" % max(int(value) - 1, 0)


def max_forwards_exhausted(req: Request) -> bool:
    """True when Rex must answer a TRACE/OPTIONS itself (RFC 9110 §7.6.2)."""
    if req.method not in ("TRACE", "OPTIONS"):
        return False
    value = req.header(b"max-forwards")
    return value is not None and value.strip() == b"0"


def trace_echo(req: Request) -> bytes:
    """The body of Rex's own TRACE answer: the request as received (``message/http``)."""
    lines = [b"%s %s HTTP/%s\r\n" % (req.method.encode(), req.target, req.version.encode())]
    lines += (b"%s: %s\r\n" % (k, v) for k, v in req.headers
              if k.lower() not in _TRACE_HIDDEN)
    lines.append(b"\r\n")
    return b"".join(lines)


def response_fields(resp: Response, location: Callable[[bytes], bytes] | None = None,
                    listed: frozenset[bytes] = _NONE) -> list[Header]:
    """The end-to-end fields Rex passes on for an upstream response.

    Hop-by-hop fields and those ``Connection`` names go (the connection sets
    framing and ``Connection`` itself), ``Via`` gets Rex's entry, ``Date`` is
    added when missing, and ``location`` maps a ``Location`` value to the one
    the client should see (SPEC §5). ``listed``: the names ``Connection`` listed
    (the second pass, rare). As in ``request_head``, the loop makes no calls for
    the common fields.
    """
    found = listed
    out: list[Header] = []
    via = b""
    dated = False
    for name, value in resp.headers:
        lname = _LOWER[name] if name in _LOWER else name.lower()
        if lname not in _RESPONSE_SPECIAL:
            if not listed or lname not in listed:
                out += ((name, value),)
        elif lname == b"connection":
            if value not in _PLAIN_CONNECTION:
                found = found | _tokens(value, _RESPONSE_SPECIAL)
        elif lname == b"via":
            via = value if not via else via + b", " + value
        elif lname == b"location":
            out += ((name, location(value) if location else value),)
        elif lname == b"date":
            dated = True
            out += ((name, value),)
    if found and not listed:
        return response_fields(resp, location, found)
    version = resp.version
    via_rex = _VIA[version] if version in _VIA else b"1.1 rex"  # noqa: SIM401 - no call
    out += ((b"Via", via + b", " + via_rex if via else via_rex),)
    if not dated:
        # RFC 9110 §6.6.1: a recipient with a clock adds Date when forwarding without one.
        out += ((b"Date", http_date()),)
    return out


def interim_fields(resp: Response) -> list[Header]:
    """The fields of a 1xx other than 101 (e.g. 103 Early Hints), minus hop-by-hop."""
    listed = connection_tokens(resp.headers)
    return [(name, value) for name, value in resp.headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in listed]


# -- Location ------------------------------------------------------------------

@lru_cache(maxsize=256)
def upstream_origins(up: Upstream) -> tuple[bytes, ...]:
    """Lower-cased ways a ``Location`` can name ``up``: with and without a default port."""
    host = f"[{up.host}]" if ":" in up.host else up.host
    origins = [f"{up.scheme}://{host}:{up.port}"]
    if up.port == (443 if up.scheme == "https" else 80):
        origins.append(f"{up.scheme}://{host}")
    return tuple(o.lower().encode() for o in origins)


def rewrite_location(
    value: bytes,
    origins: tuple[bytes, ...],
    base: bytes,
    public_origin: bytes,
    public_prefix: bytes | None,
) -> bytes:
    """The ``Location`` the client should see for an upstream's ``value``.

    ``origins``: the upstream as Rex dials it (see ``upstream_origins``);
    ``base``: the destination's base path (b"" when none); ``public_prefix``:
    the public path that maps to ``base``, or None when paths go upstream
    unchanged. An absolute URL naming the upstream gets the public origin (and
    prefix); a path starting with the base path gets the public prefix. Other
    values (other hosts, relative references) are left alone, as nginx's
    ``proxy_redirect default`` does.
    """
    if value[:1] == b"/":
        if not base or value[:2] == b"//":
            return value
        mapped = _map_path(value, base, public_prefix)
        return value if mapped is None else mapped
    lower = value[:len(origins[0])].lower()
    for origin in origins:
        if lower.startswith(origin):
            rest = value[len(origin):]
            if rest[:1] not in (b"", b"/", b"?", b"#"):
                continue  # "http://host:3000" must not match "http://host:30001"
            path = rest if rest[:1] == b"/" else b"/" + rest
            mapped = _map_path(path, base, public_prefix)
            return public_origin + (path if mapped is None else mapped)
    return value


def _map_path(path: bytes, base: bytes, prefix: bytes | None) -> bytes | None:
    """``path`` as seen upstream → as seen by the client; None when it is outside ``base``."""
    if prefix is None:
        return path
    if base:
        if not path.startswith(base) or path[len(base):len(base) + 1] not in (b"", b"/",
                                                                                b"?", b"#"):
            return None
        path = path[len(base):]
    out = prefix + path
    if not out.startswith(b"/"):
        out = b"/" + out
    return out
