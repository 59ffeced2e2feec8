"""The validator's checks of the front-door keys: header rules, CORS, error pages, redirects.

A mixin of ``validator.RexValidator`` (Cerberus finds ``_check_with_<name>`` methods by
name), kept apart so that each file stays readable. Same contract: one value at a time,
errors worded for people, no model objects, no gevent.
"""

from __future__ import annotations

import os
import re

from . import templates
from .schema import STATIC_PREFIX, parse_destination

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 tchar
_ORIGIN = re.compile(r"https?://[^/?#\s]+|null")
_STATUS_CLASS = re.compile(r"[45]xx")
ERROR_PAGE_BYTES = 1024 * 1024  # pages are held in memory by every worker

# Fields a header rule may not touch. Framing and hop-by-hop fields belong to each
# connection (RFC 9110 §7.6.1, RFC 9112 §6); a rule setting them could desynchronize
# a client or an upstream. On requests, Host and the forwarding fields are Rex's to
# set from what it knows (preserve_host, trusted_proxies), and so is the request id.
_CONNECTION_FIELDS = frozenset({"connection", "keep-alive", "proxy-connection", "te",
                                "transfer-encoding", "upgrade", "trailer", "content-length"})
_REQUEST_FIELDS = frozenset({"host", "expect", "via", "forwarded", "x-forwarded-for",
                             "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
                             "x-request-id", "max-forwards"})


class FrontDoorChecks:
    """``check_with`` rules of ``schema.FRONT_DOOR`` and of a route's redirect and rewrite."""

    def _check_with_header_token(self, field, value):
        if not _TOKEN.fullmatch(value):
            self._error(field, f"not a header field name: {value!r}")

    def _check_with_request_header_name(self, field, value):
        self._header_name(field, value, _CONNECTION_FIELDS | _REQUEST_FIELDS)

    def _check_with_response_header_name(self, field, value):
        self._header_name(field, value, _CONNECTION_FIELDS)

    def _header_name(self, field, value, reserved: frozenset[str]) -> None:
        if not _TOKEN.fullmatch(value):
            self._error(field, f"not a header field name: {value!r}")
        elif value.lower() in reserved:
            why = ("is set by Rex for each connection" if value.lower() in _CONNECTION_FIELDS
                   else "is set by Rex (see preserve_host, trusted_proxies)")
            self._error(field, f"{value} cannot be changed by a header rule: it {why}")

    def _check_with_header_template(self, field, value):
        self._check_with_header_value(field, value)
        self._template(field, value, None)

    def _template(self, field, value: str, captures: int | None) -> None:
        try:
            templates.parse(value, captures)
        except ValueError as exc:
            self._error(field, str(exc))

    def _route_pattern(self) -> str:
        """The ``path`` of the route whose ``redirect:`` mapping is being checked."""
        node = self.root_document
        for part in self.document_path[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return ""
        path = node.get("path") if isinstance(node, dict) else None
        return path if isinstance(path, str) else ""

    def _check_with_redirect_to(self, field, value):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            self._error(field, "must not contain control characters")
            return
        self._template(field, value, templates.captures(self._route_pattern()))

    def _check_with_rewrite(self, field, value):
        if not value.startswith(("/", "{")):
            self._error(field, 'must be a path starting with "/" (or with {path}, {uri})')
            return
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            self._error(field, "must not contain spaces or control characters")
            return
        self._template(field, value, templates.captures(self.document.get("path", "")))
        destination = self.document.get("destination")
        if "redirect" in self.document or (isinstance(destination, str) and destination.strip(
                ).startswith(("wsgi:", STATIC_PREFIX))):
            self._error(field, "rewrite is only for proxied destinations")
            return
        if self.document.get("strip_prefix"):
            self._error(field, "rewrite gives the whole upstream path: leave out strip_prefix")
        for entry in destination if isinstance(destination, list) else [destination]:
            url = entry.get("url") if isinstance(entry, dict) else entry
            try:
                base = parse_destination(url).base_path if isinstance(url, str) else ""
            except ValueError:
                continue  # reported at the destination
            if base:
                self._error(field, f"rewrite gives the whole upstream path: leave the path "
                                   f"out of the destination {url}")
                return

    def _check_with_static_only(self, field, value):
        destination = self.document.get("destination")
        if not (isinstance(destination, str) and destination.startswith(STATIC_PREFIX)):
            self._error(field, "static options on a route are only for static: destinations")

    def _check_with_cors(self, field, value):
        if value is True:
            self._error(field, "cors needs the allowed origins: cors: {origins: [...]}")
        elif isinstance(value, dict) and value.get("credentials") and "*" in (
                value.get("origins") or ()):
            self._error(field, 'credentials cannot go with origins "*": list the origins')

    def _check_with_origin(self, field, value):
        if value != "*" and not _ORIGIN.fullmatch(value.lower().rstrip("/")):
            self._error(field, f"not an origin (scheme://host[:port] or *): {value!r}")

    def _check_with_error_status(self, field, value):
        text = str(value).lower()
        if _STATUS_CLASS.fullmatch(text) or (text.isdigit() and 400 <= int(text) <= 599):
            return
        self._error(field, f"must be a status from 400 to 599, 4xx or 5xx (not {value!r})")

    def _check_with_error_page(self, field, value):
        if not os.path.isfile(value):
            self._error(field, f"error page not found: {value}")
        elif os.path.getsize(value) > ERROR_PAGE_BYTES:
            self._error(field, f"error page larger than 1 MiB: {value}")
        elif not os.access(value, os.R_OK):
            self._error(field, f"error page not readable: {value}")
