"""The PEP 3333 ``environ`` for one request, built from the parsed request head.

Pure policy: given a ``Request`` and a few facts the caller knows (the route's
prefix length, whether the client is a trusted proxy, the objects to put under
``wsgi.*``), return the dict an application receives. May not touch sockets,
read the body or import gevent; the streams themselves come from the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..http.request import Request

# X-Forwarded-* from an untrusted client are dropped, as the proxy does for
# upstreams (SPEC §5): an app behind Rex must be able to believe them.
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-forwarded-port"})
# Fields the environ carries under their own CGI names, or must never carry:
# "Proxy" would become HTTP_PROXY, which CGI-style libraries read as their
# outgoing proxy setting ("httpoxy", CVE-2016-5385).
_SPECIAL = frozenset({b"content-type", b"content-length", b"proxy"})


def wsgi_str(text: str) -> str:
    """A "native string" holding bytes, as PEP 3333 wants for paths: UTF-8 read as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def split_path(path: str, strip_segments: int) -> tuple[str, str]:
    """(SCRIPT_NAME, PATH_INFO) for a normalized ``path`` whose route prefix has that many segments.

    ``/app/users/7`` under a one-segment prefix gives ("/app", "/users/7"); the
    prefix itself gives ("/app", ""), and ``/app/`` gives ("/app", "/"), the
    split PEP 3333 (and ``wsgiref.util.shift_path_info``) describes.
    """
    if strip_segments <= 0:
        return "", path
    parts = path.split("/", strip_segments + 1)
    script = "/".join(parts[:strip_segments + 1])
    return script, path[len(script):]


def url_scheme(req: Request, trusted: bool) -> str:
    """``https`` for TLS listeners, or what a trusted proxy's X-Forwarded-Proto says."""
    if req.scheme == "https" or not trusted:
        return req.scheme
    value = req.header(b"x-forwarded-proto")
    if value is None:
        return req.scheme
    # A chain of proxies appends; the first value is what the client used.
    first = value.split(b",")[0].strip().lower()
    return first.decode("latin-1") if first in (b"http", b"https") else req.scheme


# What every environ holds whatever the request: a route's copy is made once
# (``base_environ``) and each request's environ starts from it.
_CONSTANT: dict[str, Any] = {
    "SERVER_SOFTWARE": "rex",
    "wsgi.version": (1, 0),
    "wsgi.run_once": False,
    # Greenlets interleave like threads once the worker is monkey-patched.
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    # Our input returns EOF at the end of the body, chunked or not, so apps
    # (Werkzeug) may read a body that has no Content-Length.
    "wsgi.input_terminated": True,
}

# Field name as received -> its environ key, or None for a field the environ never
# carries. Learnt once per spelling, so a request's fields cost a lookup each, not
# lower/decode/upper/replace. Clients choose the names: the table stops growing at
# _KEYS_MAX and later names are worked out every time instead.
_KEYS: dict[bytes, str | None] = {}
_KEYS_MAX = 1024
_FORWARDED_KEYS = frozenset("HTTP_" + n.decode().upper().replace("-", "_") for n in _FORWARDED)


def base_environ(**constant: Any) -> dict[str, Any]:
    """The part of the environ that is the same for every request of a route."""
    return {**_CONSTANT, **constant}


def _key(name: bytes) -> str | None:
    """The environ key for a field named ``name``; None when the field is left out."""
    lname = name.lower()
    if b"_" in lname or lname in _SPECIAL:
        key = "CONTENT_TYPE" if lname == b"content-type" else None
    else:
        key = "HTTP_" + lname.decode("latin-1").upper().replace("-", "_")
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[name] = key
    return key


def header_vars(headers: Iterable[tuple[bytes, bytes]], trusted: bool,
                out: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``HTTP_*`` variables (and CONTENT_TYPE) for the request's header fields.

    Added to ``out`` when given (an environ being built), else to a new dict.
    Repeated fields are joined with ", " (RFC 9110 §5.3), cookies with "; "
    (RFC 6265 §5.4). Names containing "_" are dropped: "X-User_Id" and
    "X-User-Id" would both become HTTP_X_USER_ID, so a client could spoof a
    field a front proxy set (nginx and Apache drop them too). CONTENT_LENGTH
    comes from the parsed framing, not the raw field.
    """
    if out is None:
        out = {}
    keys = _KEYS
    for name, value in headers:
        key = keys[name] if name in keys else _key(name)
        if key is None or (not trusted and key in _FORWARDED_KEYS):
            continue
        if key in out and key != "CONTENT_TYPE":  # a repeated Content-Type: the last wins
            sep = "; " if key == "HTTP_COOKIE" else ", "
            out[key] = out[key] + sep + value.decode("latin-1")
        else:
            out[key] = value.decode("latin-1")
    return out


def build_environ(
    req: Request,
    strip_segments: int,
    *,
    trusted: bool,
    server_name: str,
    wsgi: dict[str, Any],
    base: dict[str, Any] = _CONSTANT,
) -> dict[str, Any]:
    """The whole environ: ``base`` (see ``base_environ``) and this request's part.

    ``wsgi`` supplies the per-request ``wsgi.*`` objects (input, errors, ...).
    """
    path = req.path
    if strip_segments:
        script_name, path = split_path(path, strip_segments)
        script_name = wsgi_str(script_name)
    else:
        script_name = ""
    target = req.target.decode("latin-1")
    scheme = req.scheme
    if trusted and scheme != "https":
        scheme = url_scheme(req, trusted)
    client_ip, client_port = req.client_addr
    environ: dict[str, Any] = {
        **base,
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path if path.isascii() else wsgi_str(path),
        "QUERY_STRING": req.query.decode("latin-1") if req.query else "",
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(req.server_port),
        "SERVER_PROTOCOL": "HTTP/1.1" if req.version == "1.1" else f"HTTP/{req.version}",
        "REMOTE_ADDR": client_ip,
        "REMOTE_PORT": str(client_port),
        # The undecoded target, as gunicorn (RAW_URI) and uWSGI (REQUEST_URI) offer it.
        "RAW_URI": target,
        "REQUEST_URI": target,
        "wsgi.url_scheme": scheme,
        **wsgi,  # "wsgi.*" keys: no field or CGI variable below can overwrite them
    }
    header_vars(req.headers, trusted, environ)
    if req.request_id:  # Rex's id for the request, whatever the client sent
        environ["HTTP_X_REQUEST_ID"] = req.request_id.decode("latin-1")
    # PEP 3333 / CGI: CONTENT_LENGTH is absent when the length is unknown (chunked).
    if req.content_length is not None and not req.chunked:
        environ["CONTENT_LENGTH"] = str(req.content_length)
    return environ
