"""Error pages: a site's own files for Rex's error responses, JSON for API clients.

Rex's own error responses (``Response.own``: made by ``http.pages``) pass
``replace_own`` on their way out: a client whose ``Accept`` prefers JSON gets
``{"status": 404, "error": "Not Found"}``, any other gets the page configured
for the status (``error_pages: {404: ..., 5xx: ...}``, the exact status before
its class), else the built-in page. With ``intercept_errors`` an upstream's
4xx/5xx body is replaced the same way when a page is configured for it (nginx's
``proxy_intercept_errors``): ``ErrorPages`` is then also a filter. The status
never changes, and neither do fields like ``Allow``, ``Location``,
``WWW-Authenticate`` or ``Retry-After``.

Pure: the pages are bytes read once by the worker (``serve``). No sockets.
"""

from __future__ import annotations

import json

from .message import BodyTransform, Response
from .pages import reason
from .request import Request

JSON = b"application/json"
# What describes the body being replaced; the new body brings its own Content-Type.
_BODY_FIELDS = frozenset({b"content-type", b"content-encoding", b"content-range",
                          b"content-language", b"content-location", b"content-disposition",
                          b"etag", b"last-modified", b"accept-ranges"})
_JSON_TYPES = (b"application/json", b"application/problem+json")


class ErrorPages:
    """One scope's pages (status or "4xx"/"5xx" → (body, content type)), and its filter."""

    __slots__ = ("intercept", "pages")

    def __init__(self, pages: dict[str, tuple[bytes, bytes]], intercept: bool = False) -> None:
        self.pages = pages
        self.intercept = intercept

    def find(self, status: int) -> tuple[bytes, bytes] | None:
        return self.pages.get(str(status)) or self.pages.get(f"{status // 100}xx")

    def __call__(self, req: Request, response: Response) -> BodyTransform | None:
        """``intercept_errors``: an upstream's (or an app's) error body becomes the page."""
        if response.status < 400 or response.own:
            return None
        page = self.find(response.status)
        if page is None:
            return None
        body, content_type = _json(response.status) if prefers_json(req) else page
        _describe(response, body, content_type)
        return _Replace(body)


def replace_own(req: Request, response: Response, pages: ErrorPages | None) -> None:
    """Rex's own error response as this client and this site want it (in place)."""
    if prefers_json(req):
        body, content_type = _json(response.status)
    else:
        page = pages.find(response.status) if pages is not None else None
        if page is None:
            return
        body, content_type = page
    _describe(response, body, content_type)
    response.body = body


def _describe(response: Response, body: bytes, content_type: bytes) -> None:
    fields = [f for f in response.headers if f[0].lower() not in _BODY_FIELDS]
    fields.append((b"Content-Type", content_type))
    response.headers = fields
    response.length = len(body)


def _json(status: int) -> tuple[bytes, bytes]:
    text = json.dumps({"status": status, "error": reason(status)}) + "\n"
    return text.encode(), JSON


def prefers_json(req: Request) -> bool:
    """Whether ``Accept`` ranks JSON above HTML (wildcards rank nothing: browsers send */*)."""
    accept = req.header(b"accept")
    if not accept or b"json" not in accept:
        return False
    best_json = best_html = 0.0
    for item in accept.split(b","):
        kind, _, params = item.partition(b";")
        kind = kind.strip().lower()
        q = 1.0
        for param in params.split(b";"):
            name, _, value = param.partition(b"=")
            if name.strip().lower() == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if kind in _JSON_TYPES or (kind.startswith(b"application/") and kind.endswith(b"+json")):
            best_json = max(best_json, q)
        elif kind in (b"text/html", b"application/xhtml+xml"):
            best_html = max(best_html, q)
    return best_json > 0 and best_json > best_html


class _Replace:
    """A body transform that drops what comes and sends the page at the end."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    def feed(self, data: bytes) -> bytes:
        return b""

    def finish(self) -> bytes:
        return self.body
