"""Small HTML pages, and the short responses Rex makes itself (errors, redirects).

The original Rex had a welcome page and 404/502/503 pages; Rex keeps them as
files in ``conf/pages`` (shipped as package data ``rex_conf``) and falls back to
a generated page for any other status. Pure: no sockets, no gevent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import formatdate
from functools import cache
from html import escape
from http import HTTPStatus
from importlib import resources

from .message import Header, Response

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


def origin_fields() -> list[Header]:
    """``Server`` and ``Date``: what Rex sends on a response it makes itself (a new list)."""
    now = int(time.time())
    if _origin_cache[0] != now:
        _origin_cache[0] = now
        _origin_cache[1] = ((b"Server", SERVER), (b"Date", http_date()))
    return list(_origin_cache[1])


_origin_cache: list = [0, ()]


def response(status: int, body: bytes | None = None, *,
             headers: Sequence[tuple[str, str]] = (),
             content_type: bytes = b"text/html; charset=utf-8") -> Response:
    """A short response Rex makes itself: a page (``body`` None) or the given body.

    ``status`` 0 means the welcome page, sent as 200. ``headers`` are extra
    fields (``Location``, ``Allow``…) as text.
    """
    own = body is None  # a page: error pages may replace it
    if own:
        body = page(status)
    fields = origin_fields()
    fields.append((b"Content-Type", content_type))
    fields += ((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    return Response(status or 200, fields, body, own=own)
