"""The WSGI app both servers run in the bench's WSGI row: 13 bytes, a one-piece list.

Rex serves it from a ``wsgi:bench.wsgi_hello:app`` route, gunicorn as
``bench.wsgi_hello:app``; ``bench/calls.py`` counts the calls it costs Rex. It
sets Content-Length itself, as most frameworks do, so both servers frame the
answer the same way (no chunking on either side).
"""

from __future__ import annotations

BODY = b"Hello, world!"
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict, start_response) -> list[bytes]:
    start_response("200 OK", list(_HEADERS))
    return [BODY]
