"""Request paths: the normalized form routing matches, the form sent upstream.

Pure functions over the raw request path (the target without its query, as
bytes). ``normalize`` decides what a path *means* and refuses what is unsafe or
ambiguous with an ``HTTPError`` (400); ``rewrite`` builds the path a proxied
request carries. No sockets, no gevent, no configuration objects.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from .request import HTTPError

# Characters left as they are when a normalized path is encoded again: the
# RFC 3986 §3.3 "pchar" set without "%", plus the "/" separator.
PATH_SAFE = "/:@!$&'()*+,;=-._~"

# RFC 3986 §2.1: "%" must be followed by two hex digits. nginx answers 400 to
# anything else, and so do we: a lone "%" has no single meaning to forward.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")

_DOT_SEGMENTS = ("", ".", "..")


def normalize(raw_path: bytes) -> str:
    """The path routing and static files match: decoded once, dot-segments resolved.

    Repeated slashes are merged, ``.`` and ``..`` resolved (RFC 3986 §5.2.4),
    a trailing slash kept. Raises ``HTTPError`` (400) for invalid escapes,
    invalid or overlong UTF-8, NUL/CR/LF, or a ``..`` that climbs above "/".
    """
    if raw_path[:1] != b"/":
        raise HTTPError("request path must start with '/'", 400)
    try:
        text = raw_path.decode("utf-8")
    except UnicodeDecodeError:
        text = "%"  # not plain: decided below, after percent-decoding
    # Fast path, taken by nearly every request: nothing to decode or resolve.
    # (Tests on str are several times cheaper than on bytes in CPython.)
    # NUL, CR and LF tested here as in ``_has_control`` (written out: no call).
    if not ("%" in text or "//" in text or "/." in text
            or "\0" in text or "\r" in text or "\n" in text):
        return text
    if _BAD_ESCAPE.search(raw_path):
        raise HTTPError("invalid percent-encoding in request path", 400)
    # Decode exactly once: "%252e" stays the three characters "%2e", never "."
    # (a second decoding is how double-encoding attacks slip through).
    text = _checked(unquote_to_bytes(raw_path))
    parts = text.split("/")
    out: list[str] = []
    for segment in parts[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                raise HTTPError("request path climbs above the root", 400)
            out.pop()
        else:
            out.append(segment)
    path = "/" + "/".join(out)
    # "/a/" and "/a/b/.." both name the directory "/a/" (RFC 3986 §5.2.4 step 2).
    if out and parts[-1] in _DOT_SEGMENTS:
        path += "/"
    return path


def _has_control(text: str) -> bool:
    # NUL, CR and LF could end or split a header line when the path is logged
    # or forwarded; httptools refuses them raw, but not percent-encoded.
    return "\0" in text or "\r" in text or "\n" in text


def _checked(data: bytes) -> str:
    """``data`` decoded as strict UTF-8, without NUL/CR/LF."""
    try:
        # Python's strict decoder rejects overlong forms ("%c0%af" as "/") and
        # surrogates, so a byte sequence has exactly one text meaning.
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError("request path is not valid UTF-8", 400)
    if _has_control(text):
        raise HTTPError("NUL, CR or LF in request path", 400)
    return text


def rewrite(raw_path: bytes, strip_segments: int, base_path: str) -> bytes:
    """The path sent upstream: the first ``strip_segments`` segments replaced by ``base_path``.

    ``base_path`` is "" or starts with "/" and has no trailing slash. With
    nothing to strip or prepend the raw path goes out byte for byte (SPEC §4,
    like nginx's ``proxy_pass`` without a URI). The result always starts with
    "/"; a trailing slash is kept: ("/api/", 1, "/v2") gives "/v2/".
    """
    if strip_segments == 0 and not base_path:
        return raw_path
    segments = _aligned_segments(raw_path)
    rest = segments[strip_segments:]
    tail = b"/" + b"/".join(rest) if rest else b""
    # "%" stays safe here: a base path from the config may already be encoded.
    return (quote(base_path, safe=PATH_SAFE + "%").encode("ascii") + tail) or b"/"


def _aligned_segments(raw_path: bytes) -> list[bytes]:
    """Segments of the path that line up with the route's literal segments.

    The raw segments when they decode one to one to the normalized ones (the
    client's own encoding is kept); otherwise (``//``, ``/./``, ``/../``, an
    encoded "/" or dot) the normalized path, encoded again.
    """
    raw_segments = raw_path.split(b"/")[1:]
    if b"%" not in raw_path and b"//" not in raw_path and b"/." not in raw_path:
        return raw_segments
    path = normalize(raw_path)
    if [unquote_to_bytes(s).decode("utf-8") for s in raw_segments] == path.split("/")[1:]:
        return raw_segments
    return quote(path, safe=PATH_SAFE).encode("ascii").split(b"/")[1:]
