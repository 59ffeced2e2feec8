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


def header_vars(headers: Iterable[tuple[bytes, bytes]], trusted: bool) -> dict[str, str]:
    """The ``HTTP_*`` variables (and CONTENT_TYPE) for the request's header fields.

    Repeated fields are joined with ", " (RFC 9110 §5.3), cookies with "; "
    (RFC 6265 §5.4). Names containing "_" are dropped: "X-User_Id" and
    "X-User-Id" would both become HTTP_X_USER_ID, so a client could spoof a
    field a front proxy set (nginx and Apache drop them too).
    """
    out: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if b"_" in lname or lname == b"proxy" or (lname in _FORWARDED and not trusted):
            continue
        if lname in _SPECIAL:
            if lname == b"content-type":
                out["CONTENT_TYPE"] = value.decode("latin-1")
            continue  # CONTENT_LENGTH comes from the parsed framing, not the raw field
        key = "HTTP_" + lname.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key in out:
            sep = "; " if lname == b"cookie" else ", "
            out[key] = out[key] + sep + text
        else:
            out[key] = text
    return out


def build_environ(
    req: Request,
    strip_segments: int,
    *,
    trusted: bool,
    server_name: str,
    wsgi: dict[str, Any],
) -> dict[str, Any]:
    """The whole environ. ``wsgi`` supplies the ``wsgi.*`` objects (input, errors, ...)."""
    script_name, path_info = split_path(req.path, strip_segments)
    target = req.target.decode("latin-1")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": wsgi_str(script_name),
        "PATH_INFO": wsgi_str(path_info),
        "QUERY_STRING": req.query.decode("latin-1"),
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(req.server_port),
        "SERVER_PROTOCOL": f"HTTP/{req.version}",
        "SERVER_SOFTWARE": "rex",
        "REMOTE_ADDR": req.client_addr[0],
        "REMOTE_PORT": str(req.client_addr[1]),
        # The undecoded target, as gunicorn (RAW_URI) and uWSGI (REQUEST_URI) offer it.
        "RAW_URI": target,
        "REQUEST_URI": target,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme(req, trusted),
        "wsgi.run_once": False,
        # Greenlets interleave like threads once the worker is monkey-patched.
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        # Our input returns EOF at the end of the body, chunked or not, so apps
        # (Werkzeug) may read a body that has no Content-Length.
        "wsgi.input_terminated": True,
    }
    environ.update(header_vars(req.headers, trusted))
    if req.request_id:  # Rex's id for the request, whatever the client sent
        environ["HTTP_X_REQUEST_ID"] = req.request_id.decode("latin-1")
    # PEP 3333 / CGI: CONTENT_LENGTH is absent when the length is unknown (chunked).
    if req.content_length is not None and not req.chunked:
        environ["CONTENT_LENGTH"] = str(req.content_length)
    environ.update(wsgi)
    return environ
