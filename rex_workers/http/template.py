"""Values with placeholders, rendered for one request: header rules, redirects, rewrites.

The grammar is ``config.templates`` (checked at load); this module fills it in.
What each placeholder means (docs/headers.md):

- ``{client_ip}``: the peer's address; behind a trusted proxy, the last address
  of ``X-Forwarded-For`` that is not itself a trusted proxy (nginx's realip);
- ``{host}``: the Host without its port (validated by the parser);
- ``{scheme}``: ``http``/``https``; a trusted proxy's ``X-Forwarded-Proto`` wins;
- ``{request_id}``: the request's id (``Request.request_id``);
- ``{path}``: the normalized path, percent-encoded again (never ``//``, never a
  raw ``\\`` or control character); ``{query}``: the raw query without ``?``;
  ``{uri}``: both, as a request target;
- ``{1}``, ``{2}``…: what the route pattern's wildcards matched, encoded like
  ``{path}`` (``Captures``).

Pure: no sockets, no gevent. Trust is asked through the predicate the caller passes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote

from ..config import templates
from .clientaddr import client_address
from .request import Request
from .urlpath import PATH_SAFE

Trusted = Callable[[str], bool]
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SCHEMES = ("http", "https")


def client_ip(req: Request, trusted: Trusted) -> str:
    """The client's address, believing ``X-Forwarded-For`` only as far as trusted proxies go."""
    return client_address(req, trusted)


def scheme(req: Request, trusted: Trusted) -> str:
    if trusted(req.client_addr[0]):
        proto = req.header(b"x-forwarded-proto")
        if proto:
            value = proto.split(b",")[0].strip().lower().decode("latin-1")
            if value in _SCHEMES:
                return value
    return req.scheme


def encoded_path(path: str) -> str:
    """A normalized path as it may stand in a URL or a header: percent-encoded again."""
    return quote(path, safe=PATH_SAFE)


def _value(name: str, req: Request, trusted: Trusted) -> str:
    if name == "path":
        return encoded_path(req.path)
    if name == "query":
        return req.query.decode("latin-1")
    if name == "uri":
        query = req.query.decode("latin-1")
        return encoded_path(req.path) + ("?" + query if query else "")
    if name == "host":
        return req.host
    if name == "request_id":
        return req.request_id.decode("latin-1")
    if name == "client_ip":
        return client_ip(req, trusted)
    return scheme(req, trusted)


class Template:
    """One value with placeholders; ``render`` fills it in for a request."""

    __slots__ = ("parts", "text")

    def __init__(self, text: str, captures: int | None = None) -> None:
        self.text = text
        self.parts = templates.parse(text, captures)

    def render(self, req: Request, trusted: Trusted, captured: tuple[str, ...] = ()) -> str:
        out = []
        for part in self.parts:
            if type(part) is int:
                out.append(captured[part - 1] if part <= len(captured) else "")
            elif part[:1] == "{":
                out.append(_value(part[1:], req, trusted))
            else:
                out.append(part)
        return "".join(out)

    def header_value(self, req: Request, trusted: Trusted) -> bytes:
        """Rendered for a header field: no control characters can reach the head."""
        text = _CONTROL.sub("", self.render(req, trusted))
        return text.encode("utf-8")


def location(text: str) -> str:
    """A rendered redirect target made safe for a ``Location`` field.

    Anything that is not visible ASCII is percent-encoded (so nothing from the
    request can end the header line or smuggle a space), and a path-absolute
    target never becomes a network-path reference ("//evil.example", or "/\\"
    that browsers read the same way): an open redirect needs the config's help.
    """
    text = quote(text, safe="".join(chr(c) for c in range(0x21, 0x7F) if c != 0x25) + "%")
    if text[:1] == "/" and text[1:2] in ("/", "\\"):
        text = "/" + text.lstrip("/\\")
    return text


class Captures:
    """What a route pattern's wildcards matched in a path, in pattern order.

    The trie (``config.routing``) decides which route matches; this regex only
    reads the matched pieces back, for ``{1}``, ``{2}``… A trailing ``**``
    (or ``*``) takes everything below the literal part, as the pattern matches
    it (``/old/**`` gives "a/b/" for "/old/a/b/").
    """

    __slots__ = ("count", "regex")

    def __init__(self, pattern: str) -> None:
        self.count = templates.captures(pattern)
        segments = [s for s in pattern.split("/") if s]
        out = []
        for i, segment in enumerate(segments):
            last = i == len(segments) - 1
            if segment == "**":
                out.append("(?:/(.*))?" if last else "(?:/(.*?))?")
            else:
                glob = "".join("([^/]*)" if c == "*" else "([^/])" if c == "?" else re.escape(c)
                               for c in re.sub(r"\*+", "*", segment))
                out.append("(?:/" + glob + ")?" if last and glob == "([^/]*)" else "/" + glob)
        self.regex = re.compile("".join(out) + "(?:/.*)?", re.DOTALL)

    def __call__(self, path: str) -> tuple[str, ...]:
        if not self.count:
            return ()
        match = self.regex.fullmatch(path)
        if match is None:
            return ("",) * self.count
        return tuple(encoded_path(g or "") for g in match.groups())
