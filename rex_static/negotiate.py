"""Proactive negotiation: which precompressed file, and whether a client wants HTML.

Pure functions over header values (bytes). They decide; they never look at
files or sockets.
"""

from __future__ import annotations

from collections.abc import Iterable

from rex_workers.http.codings import choose, qlist

__all__ = ["PREFERENCE", "SUFFIXES", "accepts_html", "choose_encoding", "qlist"]

# File suffix of the precompressed sibling for each content coding, in order
# of preference when the client rates them equally (brotli is smaller).
SUFFIXES = {"br": ".br", "gzip": ".gz"}
PREFERENCE = ("br", "gzip")


def choose_encoding(accept_encoding: bytes | None, available: Iterable[str]) -> str | None:
    """The precompressed file to send among ``available`` ("br", "gzip"), or None for identity.

    ``http.codings.choose`` decides (q-values, "*", identity); ties go to
    ``PREFERENCE`` order.
    """
    return choose(accept_encoding, [c for c in PREFERENCE if c in available])


def accepts_html(accept: bytes | None) -> bool:
    """True when ``Accept`` names ``text/html`` with q > 0 (a browser navigating).

    Wildcards do not count: ``*/*`` is what scripts and images send, and those
    must see a 404 for a missing file, not the SPA's HTML.
    """
    return qlist(accept).get("text/html", 0.0) > 0.0
