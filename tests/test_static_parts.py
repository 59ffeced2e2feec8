"""rex_static's small pure pieces: MIME types, the TTL cache, listing pages, heads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rex_static.cache import TTLCache
from rex_static.listing import render
from rex_static.mime import content_type
from rex_static.representation import content_range, describe
from rex_workers.http import h1write


@pytest.mark.parametrize(("name", "expected"), [
    ("index.html", b"text/html; charset=utf-8"),
    ("INDEX.HTM", b"text/html; charset=utf-8"),
    ("app.js", b"text/javascript; charset=utf-8"),
    ("app.mjs", b"text/javascript; charset=utf-8"),
    ("style.css", b"text/css; charset=utf-8"),
    ("data.json", b"application/json; charset=utf-8"),
    ("app.js.map", b"application/json; charset=utf-8"),
    ("site.webmanifest", b"application/manifest+json; charset=utf-8"),
    ("logo.svg", b"image/svg+xml; charset=utf-8"),
    ("feed.xml", b"application/xml; charset=utf-8"),
    ("notes.txt", b"text/plain; charset=utf-8"),
    ("photo.png", b"image/png"),
    ("font.woff2", b"font/woff2"),
    ("module.wasm", b"application/wasm"),
    ("archive.tar.gz", b"application/gzip"),
    ("app.js.br", b"application/octet-stream"),
    ("README", b"application/octet-stream"),
    ("x.unknown-ext", b"application/octet-stream"),
])
def test_content_type(name, expected):
    assert content_type(name) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_fresh_then_stale_then_gone():
    clock = Clock()
    cache = TTLCache(1.0, 10, 1000, clock)
    assert cache.get("a") is None
    cache.put("a", "A")
    assert cache.get("a") == ("A", True)
    clock.now += 0.99
    assert cache.get("a") == ("A", True)
    clock.now += 0.02
    assert cache.get("a") == ("A", False)  # stale, still there to revalidate
    cache.discard("a")
    assert cache.get("a") is None


def test_cache_bounds_entries_and_bytes_lru():
    cache = TTLCache(1.0, 3, 100, Clock())
    for key in "abc":
        cache.put(key, key, 10)
    cache.get("a")  # now the most recently used
    cache.put("d", "d", 10)
    assert cache.get("b") is None and len(cache) == 3
    cache.put("big", "x", 80)
    assert cache.bytes <= 100
    assert cache.get("big") is not None and cache.get("c") is None
    cache.put("huge", "x", 101)  # larger than the whole budget: not cached at all
    assert cache.get("huge") is None and cache.get("big") is not None


def test_cache_replace_keeps_byte_count():
    cache = TTLCache(1.0, 10, 100, Clock())
    cache.put("a", 1, 40)
    cache.put("a", 2, 30)
    assert cache.bytes == 30 and cache.get("a") == (2, True)


def test_listing_escapes_and_encodes_names():
    page = render("/d/", [("<b>.txt", False), ("a&b", True), ("javascript:alert(1)", False),
                          ("x y.txt", False)]).decode()
    assert "<b>.txt" not in page
    assert '<a href="%3Cb%3E.txt">&lt;b&gt;.txt</a>' in page
    assert '<a href="a%26b/">a&amp;b/</a>' in page
    assert 'href="javascript%3Aalert%281%29"' in page
    assert 'href="x%20y.txt"' in page
    assert '<a href="../">../</a>' in page
    assert "Index of /d/" in page
    assert b"../" not in render("/", [])


def test_representation_lines(tmp_path):
    path = tmp_path / "f.css"
    path.write_bytes(b"body{}")
    st = os.stat(path)
    rep = describe(str(path), st, (1, 2, 3, 4), content_type=b"text/css", coding="gzip",
                   cache_control="public, max-age=60", vary=True, now=st.st_mtime + 10)
    assert rep.size == 6
    (etag_name, etag), *rest = rep.validator_fields
    assert etag_name == b"ETag" and etag.startswith(b'"') and etag.endswith(b'-gzip"')
    assert rest[1:] == [(b"Cache-Control", b"public, max-age=60"), (b"Vary", b"Accept-Encoding")]
    assert rep.content_fields == [(b"Content-Type", b"text/css"),
                                  (b"Content-Encoding", b"gzip"), (b"Accept-Ranges", b"bytes")]
    fields = [*rep.validator_fields, *rep.content_fields, content_range(rep, 2, 5)]
    assert fields[-1] == (b"Content-Range", b"bytes 2-4/6")
    # As the connection writes it: the length from the range, Connection as asked.
    whole = h1write.head(206, [(b"Server", b"rex"), (b"Date", b"D"), *fields],
                         mode=h1write.LENGTH, length=3, keep_alive=False, version="1.1")
    assert whole.startswith(b"HTTP/1.1 206 Partial Content\r\nServer: rex\r\nDate: D\r\n")
    assert b"Content-Range: bytes 2-4/6\r\nContent-Length: 3\r\n" in whole
    assert whole.endswith(b"Connection: close\r\n\r\n")
    assert b"Connection" not in h1write.head(200, [], mode=h1write.LENGTH, length=0,
                                             keep_alive=True, version="1.1")


def test_last_modified_never_after_now(tmp_path):
    path = tmp_path / "future.txt"
    path.write_bytes(b"x")
    os.utime(path, (2_000_000_000, 2_000_000_000))
    st = os.stat(path)
    rep = describe(str(path), st, (0, 0, 0, 0), content_type=b"text/plain", coding=None,
                   cache_control=None, vary=False, now=1_000_000_000)
    assert rep.validators.mtime == 1_000_000_000  # RFC 9110 §8.8.2.1


def test_policy_modules_import_without_gevent():
    code = (
        "import sys\n"
        "import rex_static\n"
        "from rex_static import cache, conditional, files, listing, mime, negotiate, "
        "representation, resolve\n"
        "assert 'gevent' not in sys.modules, 'a pure module imported gevent'\n"
        "from rex_static import StaticSite\n"
        "assert StaticSite.__module__ == 'rex_static.site'\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=30)
