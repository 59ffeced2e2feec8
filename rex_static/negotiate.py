"""Proactive negotiation: which precompressed file, and whether a client wants HTML.

Pure functions over header values (bytes). They decide; they never look at
files or sockets.
"""

from __future__ import annotations

from collections.abc import Iterable

# File suffix of the precompressed sibling for each content coding, in order
# of preference when the client rates them equally (brotli is smaller).
SUFFIXES = {"br": ".br", "gzip": ".gz"}
PREFERENCE = ("br", "gzip")

# RFC 9110 §8.4.1.3: "x-gzip" is an alias a recipient should treat as "gzip".
_ALIASES = {"x-gzip": "gzip"}


def _qvalue(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0  # RFC 9110 §12.4.2 grammar violated: treat as unacceptable
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def qlist(value: bytes | None) -> dict[str, float]:
    """An ``Accept*`` list as ``{lower-case token: q}`` (RFC 9110 §12.4.2).

    When a token repeats, the first occurrence counts.
    """
    if not value:
        return {}
    out: dict[str, float] = {}
    for item in value.decode("latin-1").split(","):
        token, *params = item.split(";")
        token = token.strip().lower()
        if token:
            out.setdefault(_ALIASES.get(token, token), _qvalue(params))
    return out


def choose_encoding(accept_encoding: bytes | None, available: Iterable[str]) -> str | None:
    """The content coding to send among ``available`` ("br", "gzip"), or None for identity.

    RFC 9110 §12.5.3: a coding not listed is acceptable only through "*", and
    q=0 means "not acceptable". The highest q wins; ties go to ``PREFERENCE``
    order. An identity rated above every coding keeps the plain file.
    """
    ranks = qlist(accept_encoding)
    if not ranks:
        return None
    star = ranks.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in PREFERENCE:
        if coding not in available:
            continue
        q = ranks.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    if best is not None and ranks.get("identity", 0.0) > best_q:
        return None
    return best


def accepts_html(accept: bytes | None) -> bool:
    """True when ``Accept`` names ``text/html`` with q > 0 (a browser navigating).

    Wildcards do not count: ``*/*`` is what scripts and images send, and those
    must see a 404 for a missing file, not the SPA's HTML.
    """
    return qlist(accept).get("text/html", 0.0) > 0.0
