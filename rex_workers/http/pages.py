"""Small HTML pages and the bytes of complete short responses.

The original Rex had a welcome page and 404/502/503 pages; Rex keeps them as
files in ``conf/pages`` (shipped as package data ``rex_conf``) and falls back to
a generated page for any other status. Pure: no sockets, no gevent.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from functools import cache
from html import escape
from http import HTTPStatus
from importlib import resources

SERVER = b"rex"

_date_cache: list = [0, b""]


def http_date() -> bytes:
    """The ``Date`` value, recomputed at most once a second (RFC 9110 §6.6.1)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    return _date_cache[1]


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@cache
def page(status: int) -> bytes:
    """The HTML body for ``status``: a shipped page if there is one, else a generated one."""
    name = "welcome.html" if status == 0 else f"{status}.html"
    try:
        return resources.files("rex_conf").joinpath("pages", name).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        pass  # no shipped page for this status: generate the plain one below
    title = escape(f"{status} {reason(status)}")
    return (
        f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
        f"<body><h1>{title}</h1><hr><p>rex</p></body></html>\n"
    ).encode()


def response(
    status: int,
    body: bytes | None = None,
    *,
    keep_alive: bool = False,
    head_only: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
    content_type: bytes = b"text/html; charset=utf-8",
    version: str = "1.1",
) -> bytes:
    """A whole response (head and body) ready for one ``sendall``.

    ``status`` 0 means the welcome page, sent as 200. ``version`` is the
    client's: an HTTP/1.0 client is kept alive only when told so.
    """
    if body is None:
        body = page(status)
    code = status or 200
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (code, reason(code).encode()),
        b"Server: rex\r\nDate: " + http_date() + b"\r\n",
        b"Content-Type: " + content_type + b"\r\n",
        b"Content-Length: %d\r\n" % len(body),
    ]
    lines.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    elif version == "1.0":
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if not head_only and code not in (204, 304):
        lines.append(body)
    return b"".join(lines)
