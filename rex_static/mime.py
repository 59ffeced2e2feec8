"""Content types for file names, and the charset they are sent with.

Pure: looks at the name only, never at the bytes (no sniffing). The table
below pins the types the web depends on, so a response does not change with
the host's ``/etc/mime.types``; anything else falls back to Python's
``mimetypes`` and then to ``application/octet-stream``.
"""

from __future__ import annotations

import mimetypes
import os
from functools import lru_cache

DEFAULT_TYPE = "application/octet-stream"

# Types a browser acts on (scripts, styles, fonts, wasm, modern images): a
# wrong guess here breaks pages, e.g. module scripts refused under a non-JS type.
_WEB_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",  # RFC 9239 §6: text/javascript is the registered type
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".pdf": "application/pdf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    # Asked for by name, a compressed file is an opaque download, not an
    # encoding of something else (that is what Content-Encoding is for).
    ".gz": "application/gzip",
    ".br": DEFAULT_TYPE,
    ".zip": "application/zip",
}

# Textual types outside text/* that browsers decode with a charset.
_TEXTUAL = frozenset({
    "application/javascript",
    "application/json",
    "application/xml",
    "application/manifest+json",
    "image/svg+xml",
})


def _with_charset(kind: str) -> str:
    textual = (
        kind.startswith("text/") or kind in _TEXTUAL
        or kind.endswith("+json") or kind.endswith("+xml")
    )
    return f"{kind}; charset=utf-8" if textual else kind


@lru_cache(maxsize=512)
def _for_extension(ext: str) -> bytes:
    kind = _WEB_TYPES.get(ext)
    if kind is None:
        # guess_type reads the system tables on first use: deterministic enough
        # for the long tail that _WEB_TYPES does not pin.
        kind = mimetypes.guess_type("x" + ext, strict=False)[0] or DEFAULT_TYPE
    return _with_charset(kind).encode("latin-1")


def content_type(name: str) -> bytes:
    """The ``Content-Type`` value for a file called ``name`` (only its extension counts)."""
    ext = os.path.splitext(name)[1].lower()
    if not ext:
        return DEFAULT_TYPE.encode()
    return _for_extension(ext)
