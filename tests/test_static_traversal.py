"""Nothing outside the root, whatever the spelling: a canary file sits just outside it.

Every attempt is sent over a real socket twice: once through the handler's
real normaliser, once through a deliberately naive one (decode only, no
dot-segment resolution) to show that rex_static's own checks are enough.
The canary must never appear, and the answer is always 400, 403 or 404.
"""

from __future__ import annotations

import os

import pytest
from test_static_harness import (
    Client,
    RecordingStream,
    RouteServer,
    StaticServer,
    get,
    naive_path,
)

from rex_workers.config.model import StaticOptions
from rex_workers.http.request import Request
from rex_workers.http.urlpath import normalize

CANARY = b"CANARY-d41d8cd98f00"

ATTEMPTS = [
    b"/../canary.txt",
    b"/../../canary.txt",
    b"/sub/../../canary.txt",
    b"/./../canary.txt",
    b"//../canary.txt",
    b"/%2e%2e/canary.txt",
    b"/%2E%2E/canary.txt",
    b"/.%2e/canary.txt",
    b"/%2e./canary.txt",
    b"/%2e%2e%2fcanary.txt",
    b"/..%2fcanary.txt",
    b"/..%2Fcanary.txt",
    b"/sub/%2e%2e/%2e%2e/canary.txt",
    b"/%252e%252e/canary.txt",
    b"/%252e%252e%252fcanary.txt",
    b"/%25252e%25252e/canary.txt",
    b"/..%5ccanary.txt",
    b"/..%255ccanary.txt",
    b"/..\\canary.txt",
    b"/sub\\..\\..\\canary.txt",
    b"/%c0%ae%c0%ae/canary.txt",
    b"/%c0%2e%c0%2e/canary.txt",
    b"/%c0%ae%c0%ae%c0%afcanary.txt",
    b"/%e0%80%ae%e0%80%ae/canary.txt",
    b"/%25c0%25ae%25c0%25ae/canary.txt",
    b"/..%00/canary.txt",
    b"/canary.txt%00.html",
    b"/index.html%00",
    b"/index.html%2500",
    b"/C:/canary.txt",
    b"/c:%5ccanary.txt",
    b"/%2fcanary.txt",
    b"/link.txt",
    b"/link.txt.gz",
    b"/linkdir/canary.txt",
    b"/linkdir/",
    b"/linkdir",
    b"/prefix/canary.txt",
    b"/../public-secret/canary.txt",
    b"/%2e%2e/public-secret/canary.txt",
    b"/sub/deep",
    b"/abs",
    b"/.%2e/.%2e/.%2e/.%2e/.%2e/.%2e/etc/passwd",
    b"/.../canary.txt",
    b"/....//canary.txt",
]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "public"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_bytes(b"<h1>home</h1>")
    (root / "sub" / "page.txt").write_bytes(b"page")
    (tmp_path / "canary.txt").write_bytes(CANARY)
    (tmp_path / "public-secret").mkdir()
    (tmp_path / "public-secret" / "canary.txt").write_bytes(CANARY)
    (root / "link.txt").symlink_to("../canary.txt")
    (root / "link.txt.gz").symlink_to("../canary.txt")
    (root / "linkdir").symlink_to("..")
    (root / "prefix").symlink_to("../public-secret")  # shares the root's name as a prefix
    (root / "sub" / "deep").symlink_to("../../canary.txt")
    (root / "abs").symlink_to(tmp_path / "canary.txt")
    return tmp_path


@pytest.fixture(params=[(normalize, ""), (naive_path, ""), (normalize, "/files"),
                        (naive_path, "/files")],
                ids=["normalize", "naive", "route-normalize", "route-naive"])
def server(request, tree):
    """``public`` itself, or the same directory as a ``static:`` route at /files."""
    normalizer, prefix = request.param
    if prefix:
        srv = RouteServer(str(tree / "public"), prefix, ", static: {listing: true}", normalizer)
    else:
        opts = StaticOptions(listing=True, precompressed=True)
        srv = StaticServer(str(tree / "public"), opts, normalizer=normalizer)
        srv.prefix = ""
    yield srv
    srv.close()


def _fetch(server, target: bytes) -> tuple[int, bytes]:
    with Client(server.port) as c:
        c.send("GET", server.prefix.encode() + target,
               {"Connection": "close", "Accept-Encoding": "gzip, br"})
        raw = c.read_all()
    return int(raw.split(b" ", 2)[1]) if raw else 0, raw


@pytest.mark.parametrize("target", ATTEMPTS, ids=[t.decode("latin-1") for t in ATTEMPTS])
def test_traversal_never_reaches_the_canary(server, target):
    status, raw = _fetch(server, target)
    assert CANARY not in raw
    assert status in (400, 403, 404), raw[:200]


def test_absolute_path_of_the_canary_maps_under_the_root(server, tree):
    status, raw = _fetch(server, str(tree / "canary.txt").encode())
    assert status == 404 and CANARY not in raw


def test_symlinks_out_are_403_and_listed_nowhere(server):
    assert _fetch(server, b"/link.txt")[0] == 403
    page = get(server.port, server.prefix + "/sub/").body
    assert b"page.txt" in page and b"deep" not in page


def test_follow_symlinks_is_an_explicit_opt_in(tree):
    srv = StaticServer(str(tree / "public"), StaticOptions(follow_symlinks=True))
    try:
        assert get(srv.port, "/link.txt").body == CANARY
    finally:
        srv.close()


def test_a_handler_bug_cannot_open_the_file_system(tree):
    """req.path wrong but raw_path innocent: StaticSite checks req.path on its own too."""
    srv = StaticServer(str(tree / "public"))
    try:
        for path in ("/../canary.txt", "/sub/../../canary.txt", "/..\\canary.txt",
                     "/canary.txt\0"):
            req = Request(method="GET", target=b"/x", path=path, query=b"", version="1.1",
                          headers=[], raw_path=b"/x")
            stream = RecordingStream(req)
            assert srv.site.handle(stream)
            [response] = stream.responses
            assert response.status == 403
            assert CANARY not in response.body
    finally:
        srv.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_directory_swapped_for_a_symlink_after_caching(tree):
    """The race between checking a path and opening it: caught by the inode check."""
    public = tree / "public"
    (public / "data").mkdir()
    (public / "data" / "big.bin").write_bytes(b"a" * 200_000)
    outside = tree / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(CANARY * 20_000)
    clock = Clock()
    srv = StaticServer(str(public), clock=clock)
    try:
        assert get(srv.port, "/data/big.bin").body == b"a" * 200_000  # resolved and cached
        os.rename(public / "data", public / "data-old")
        (public / "data").symlink_to(outside)
        srv.prefix = ""
        status, raw = _fetch(srv, b"/data/big.bin")  # still within the cache's TTL
        assert status == 403 and CANARY not in raw
        clock.now += 10
        status, raw = _fetch(srv, b"/data/big.bin")  # resolved again from scratch
        assert status == 403 and CANARY not in raw
    finally:
        srv.close()
