"""Small files as responses ready to send: head bytes and body, kept per path.

Pure: no files, no sockets, no gevent. Like nginx's ``open_file_cache``, a small
file (its content is in the site's cache already) gets its response rendered
once per file version: the status line and ``Server``, then, after the ``Date``
the request adds, every end-to-end field of a 200 (validators, type, coding,
``Accept-Ranges``) as bytes. A plain GET or HEAD of a hot path then costs a
dictionary look-up, one clock reading and one send (``StaticSite.handle``);
the connection adds ``X-Request-ID``, ``Content-Length`` and ``Connection``
exactly as ``http.h1write.head`` would (``H1Writer.respond_ready``).

A ``HotFile`` is a view of one entry of the site's ``TTLCache``: it goes stale
with it and is dropped with it (the cache's ``on_drop``), so it holds no bytes
the cache does not account for, and the cache's bounds bound it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from rex_workers.http.h1write import status_line
from rex_workers.http.message import Header
from rex_workers.http.pages import SERVER

from .conditional import http_date

# What every ready 200 starts with, up to the Date value (h1write.head's order:
# the status line, then the fields as the responder lists them, Server first).
HEAD_START = status_line(200) + b"Server: " + SERVER + b"\r\nDate: "


class Ready:
    """One representation of a small file as a 200: its fields after Date, and its body."""

    __slots__ = ("body", "fields", "length")

    def __init__(self, fields: Sequence[Header], body: bytes) -> None:
        # Ends the Date line, then one line per field: the bytes h1write.head makes.
        self.fields = b"\r\n" + b"".join(b"%s: %s\r\n" % field for field in fields)
        self.body = body
        self.length = len(body)

    @property
    def size(self) -> int:
        """Bytes held beyond the body (which the cache counts already)."""
        return len(self.fields)


class HotFile:
    """A path whose plain GET/HEAD is answered from memory until ``expires``.

    ``raw`` and ``mount``: the raw request path and mount the path was vetted
    with (both must match for a request to use the entry). ``single``: the ready
    response when the file has no precompressed siblings; otherwise ``ready``
    maps each coding (None for identity) to its own, chosen per request.
    ``target``: the cache entry this is a view of.
    """

    __slots__ = ("expires", "mount", "raw", "ready", "single", "target")

    def __init__(self, expires: float, raw: bytes, mount: int,
                 ready: dict[str | None, Ready], target: Any) -> None:
        self.expires = expires
        self.raw = raw
        self.mount = mount
        self.ready = ready
        self.single = ready[None] if len(ready) == 1 else None
        self.target = target


class SecondDate:
    """The ``Date`` value of the current second, renewed when the second is over.

    Read against the caller's own clock reading (``until`` is on that clock),
    so a request that has read the clock already pays no call for its Date;
    only ``tick``, once a second, reads the wall clock.
    """

    __slots__ = ("until", "value", "wall")

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.until = float("-inf")
        self.value = b""

    def tick(self, now: float) -> bytes:
        """The Date value at clock time ``now``; valid until ``until``."""
        wall = self.wall()
        second = int(wall)
        self.value = http_date(second)
        self.until = now + (second + 1 - wall)
        return self.value
