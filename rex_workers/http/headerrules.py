"""Header rules (``headers:``) and ``security_headers``: edits of header fields.

A ``HeaderEdit`` is one level's ``set``/``add``/``remove`` for one direction,
compiled once: every field named by ``remove`` or ``set`` goes, then the
``set`` fields and the ``add`` ones are appended, their placeholders filled
for the request. Levels are applied outermost first, so the nearest level wins
field by field. On a request the edits run before dispatch (an upstream and a
WSGI app see the result); on a response they are a filter (``ResponseRules``),
so every responder's answer gets them, Rex's own pages included.

The config refused framing and hop-by-hop names (``config.validator``): an edit
never touches what the connection frames. Pure: no sockets, no gevent.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config.model import HeaderRules
from .message import BodyTransform, Header, Response
from .request import Request
from .template import Template, Trusted


class HeaderEdit:
    """One level's rules for one direction (``HeaderRules``), ready to apply."""

    __slots__ = ("append", "drop")

    def __init__(self, rules: HeaderRules) -> None:
        self.drop = frozenset(n.lower().encode("latin-1") for n in rules.remove) | frozenset(
            n.lower().encode("latin-1") for n, _ in rules.set)
        self.append = tuple((n.encode("latin-1"), Template(v)) for n, v in (*rules.set,
                                                                           *rules.add))

    def apply(self, headers: list[Header], req: Request, trusted: Trusted) -> list[Header]:
        drop = self.drop
        out = [f for f in headers if f[0].lower() not in drop] if drop else list(headers)
        out += ((name, value.header_value(req, trusted)) for name, value in self.append)
        return out


def edit_request(edits: Sequence[HeaderEdit], req: Request, trusted: Trusted) -> None:
    """Apply request edits before dispatch (Host and the parsed framing stay as they came)."""
    for edit in edits:
        req.headers = edit.apply(req.headers, req, trusted)


class ResponseRules:
    """The response side as a filter: each level's edits on every response head."""

    __slots__ = ("edits", "trusted")

    def __init__(self, edits: Sequence[HeaderEdit], trusted: Trusted) -> None:
        self.edits = tuple(edits)
        self.trusted = trusted

    def __call__(self, req: Request, response: Response) -> BodyTransform | None:
        for edit in self.edits:
            response.headers = edit.apply(response.headers, req, self.trusted)
        return None


# ``security_headers: true``: what helmet, Mozilla's observatory and most hardening
# guides ask of every response, minus what can break a working site (a CSP, COOP,
# which closes OAuth pop-ups). Added only where the responder did not set the field,
# so an app's own policy (or a header rule, which runs after) wins.
SECURITY = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"strict-origin-when-cross-origin"),
    (b"X-Frame-Options", b"SAMEORIGIN"),
)
# RFC 6797 §7.2: sent over TLS only (a browser ignores it on plain HTTP). One year;
# includeSubDomains and preload are the site's decision, made with a header rule.
HSTS = (b"Strict-Transport-Security", b"max-age=31536000")


def security_headers(req: Request, response: Response) -> BodyTransform | None:
    """The filter for ``security_headers: true``."""
    present = {name.lower() for name, _ in response.headers}
    fields = (*SECURITY, HSTS) if req.scheme == "https" else SECURITY
    response.headers += [f for f in fields if f[0].lower() not in present]
    return None
