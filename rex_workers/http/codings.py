"""Content codings a client accepts: ``Accept-Encoding`` read once, one rule for every responder.

Pure functions over header values (bytes): the static responder picks a
precompressed file with them, the compression filter an encoder. They decide;
they never look at files, bodies or sockets.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def choose(accept_encoding: bytes | None, offered: Iterable[str]) -> str | None:
    """The coding to send among ``offered`` (in the server's order of preference), or None.

    None means identity. RFC 9110 §12.5.3: a coding not listed is acceptable
    only through "*", and q=0 means "not acceptable". The highest q wins; ties
    go to the earlier offer. An identity rated above every coding wins too. No
    header at all also means identity: any coding would be allowed, but a
    client that says nothing may not be able to decode one (nginx, Caddy).
    """
    ranks = qlist(accept_encoding)
    if not ranks:
        return None
    star = ranks.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in offered:
        q = ranks.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    if best is not None and ranks.get("identity", 0.0) > best_q:
        return None
    return best
