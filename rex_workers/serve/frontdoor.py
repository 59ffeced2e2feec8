"""The front door of one scope (an instance, or a route within it), built once per worker.

A ``Door`` gathers what the config's front-door keys (``config.model.Rules``)
mean for requests answered in one scope: the request header edits, the
response filters (``intercept_errors``, ``security_headers``, CORS, header
rules: in that order, so the rules have the last word), the CORS policy for
preflights, the error pages and the trailing-slash mode. The levels are the
top level, the instance and the route, outermost first; the nearest level
that sets a key wins, header rules apply level after level and error pages
merge by status.

``build`` returns None when nothing is configured in a scope: the site then
adds nothing to a request's path (the call budget, tests/test_call_budget.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rex_static.mime import content_type

from ..config.model import Rules
from ..http.cors import CorsPolicy
from ..http.errorpages import ErrorPages
from ..http.headerrules import HeaderEdit, ResponseRules, security_headers
from ..http.message import Filter
from ..http.template import Trusted


@dataclass(frozen=True, slots=True)
class Door:
    request: tuple[HeaderEdit, ...]  # edits of the request head, level after level
    filters: tuple[Filter, ...]  # the filter stage for responses in this scope
    cors: CorsPolicy | None
    pages: ErrorPages | None
    slash: str | None


def nearest(levels: Sequence[Rules], name: str) -> object:
    """The value of the nearest level that sets ``name`` (None when none does)."""
    for rules in reversed(levels):
        value = getattr(rules, name)
        if value is not None:
            return value
    return None


def build(levels: Sequence[Rules], trusted: Trusted, read_page: Callable[[str], bytes],
          request_from: int = 0) -> Door | None:
    """The door for a scope whose levels are ``levels`` (outermost first), or None.

    Request edits come from ``levels[request_from:]`` only: a route's door runs
    after its instance's, which made the outer levels' edits already.
    """
    if all(rules == Rules() for rules in levels):
        return None
    edits = tuple(HeaderEdit(r.request_headers) for r in levels[request_from:]
                  if r.request_headers)
    paths = {status: path for rules in levels for status, path in rules.error_pages}
    pages = None
    if paths:
        pages = ErrorPages({status: (read_page(path), content_type(path))
                            for status, path in paths.items()},
                           bool(nearest(levels, "intercept_errors")))
    cors = nearest(levels, "cors")
    policy = CorsPolicy(cors) if cors not in (None, False) else None
    filters: list[Filter] = []
    if pages is not None and pages.intercept:
        filters.append(pages)
    if nearest(levels, "security_headers"):
        filters.append(security_headers)
    if policy is not None:
        filters.append(policy)
    response = [HeaderEdit(r.response_headers) for r in levels if r.response_headers]
    if response:
        filters.append(ResponseRules(response, trusted))
    return Door(edits, tuple(filters), policy, pages, nearest(levels, "trailing_slash"))


class PageFiles:
    """Error page files, each read once per worker (several scopes may name one)."""

    def __init__(self) -> None:
        self._read: dict[str, bytes] = {}

    def __call__(self, path: str) -> bytes:
        body = self._read.get(path)
        if body is None:
            with open(path, "rb") as f:
                body = self._read[path] = f.read()
        return body
