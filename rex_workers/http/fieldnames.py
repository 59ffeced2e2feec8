"""Common header field names, as they are spelled on the wire, mapped to their lower case.

Loops over every field of every proxied request and response compare lower-cased
names. ``name.lower()`` is a Python-level call per field; a look-up in this table
(``LOWER[name] if name in LOWER else name.lower()``) is not, and names outside it
still get the call. Pure data: a fixed table, never grown at run time.
"""

from __future__ import annotations

_NAMES = (
    b"Accept", b"Accept-Charset", b"Accept-Encoding", b"Accept-Language", b"Accept-Ranges",
    b"Access-Control-Allow-Credentials", b"Access-Control-Allow-Headers",
    b"Access-Control-Allow-Methods", b"Access-Control-Allow-Origin",
    b"Access-Control-Expose-Headers", b"Access-Control-Max-Age", b"Age", b"Allow",
    b"Authorization", b"Cache-Control", b"Connection", b"Content-Disposition",
    b"Content-Encoding", b"Content-Language", b"Content-Length", b"Content-Location",
    b"Content-Range", b"Content-Security-Policy", b"Content-Type", b"Cookie", b"Date",
    b"DNT", b"ETag", b"Etag", b"Expect", b"Expires", b"Forwarded", b"Host", b"If-Match",
    b"If-Modified-Since", b"If-None-Match", b"If-Range", b"If-Unmodified-Since",
    b"Keep-Alive", b"Last-Modified", b"Link", b"Location", b"Max-Forwards", b"Origin",
    b"Pragma", b"Proxy-Authorization", b"Proxy-Connection", b"Range", b"Referer",
    b"Referrer-Policy", b"Retry-After", b"Sec-Fetch-Dest", b"Sec-Fetch-Mode",
    b"Sec-Fetch-Site", b"Server", b"Set-Cookie", b"Strict-Transport-Security", b"TE",
    b"Trailer", b"Transfer-Encoding", b"Upgrade", b"Upgrade-Insecure-Requests",
    b"User-Agent", b"Vary", b"Via", b"WWW-Authenticate", b"X-Accel-Buffering",
    b"X-Content-Type-Options", b"X-Forwarded-For", b"X-Forwarded-Host", b"X-Forwarded-Port",
    b"X-Forwarded-Proto", b"X-Frame-Options", b"X-Powered-By", b"X-Real-IP",
    b"X-Request-ID", b"X-Request-Id", b"X-Requested-With", b"X-XSS-Protection",
)

# Both the usual spelling and the all-lower one (HTTP/2 and many servers send that).
LOWER: dict[bytes, bytes] = {**{n: n.lower() for n in _NAMES},
                             **{n.lower(): n.lower() for n in _NAMES}}
