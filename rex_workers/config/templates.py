"""The grammar of values with placeholders: header rules, redirects, rewrites.

``{name}`` stands for a value of the request (``NAMES``); in a route's
``redirect.to`` and ``rewrite``, ``{1}``, ``{2}``… stand for what the route
pattern's wildcards matched, left to right (``CAPTURES`` says how many a
pattern has). A brace that does not open a placeholder is a plain character.

Pure: parsing and checking only, shared by the validator (errors at load) and
the worker (``http.template`` renders). No I/O, no gevent.
"""

from __future__ import annotations

import re

NAMES = ("client_ip", "host", "scheme", "request_id", "path", "query", "uri")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

Part = str | int  # literal text, a name from NAMES (marked by a leading "{"), or a capture


def parse(text: str, captures: int | None = None) -> tuple[Part, ...]:
    """``text`` as literal pieces, ``"{name"`` markers and capture numbers.

    Raises ValueError, worded for a config error, for an unknown name or a
    capture the pattern does not have (``captures``: how many it has; None
    where there is no pattern: header values).
    """
    parts: list[Part] = []
    at = 0
    for match in _PLACEHOLDER.finditer(text):
        word = match[1]
        if word.isdigit():
            number = int(word)
            if captures is None or not 1 <= number <= captures:
                have = ("only a route's redirect and rewrite have captures" if captures is None
                        else f"the route pattern has {captures} wildcard(s)")
                raise ValueError(f"no capture {{{word}}}: {have}")
            piece: Part = number
        elif word in NAMES:
            piece = "{" + word
        else:
            known = ", ".join(f"{{{n}}}" for n in NAMES)
            raise ValueError(f"unknown placeholder {{{word}}} (known: {known})")
        if match.start() > at:
            parts.append(text[at:match.start()])
        parts.append(piece)
        at = match.end()
    if at < len(text):
        parts.append(text[at:])
    return tuple(parts)


def captures(pattern: str) -> int:
    """How many wildcards (``*`` runs, ``?``, ``**``) a route pattern has, left to right."""
    return len(re.findall(r"\*+|\?", pattern))
