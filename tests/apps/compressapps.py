"""WSGI apps for tests/test_compress.py: a whole text body, a streamed one, a file."""

from __future__ import annotations

TEXT = b"".join(b"line %d of a WSGI answer that compresses well\n" % i for i in range(200))


def text(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(TEXT))), ("ETag", '"w1"')])
    return [TEXT]


def stream(environ, start_response):
    """A body of unknown length, in pieces: each reaches the client compressed."""
    start_response("200 OK", [("Content-Type", "application/x-ndjson")])
    return (b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 40) for i in range(300))


def served_file(environ, start_response):
    """A file through wsgi.file_wrapper (a region the filter reads in blocks)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](open(environ["QUERY_STRING"], "rb"), 8192)
