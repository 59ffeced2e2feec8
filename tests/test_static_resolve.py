"""rex_static.resolve: path → decision, as tables over a fake file system."""

from __future__ import annotations

import pytest

from rex_static.resolve import (
    DENIED,
    DIR,
    FILE,
    OTHER,
    File,
    Listing,
    Node,
    Redirect,
    Refuse,
    fallback_file,
    inside,
    looks_like_client_route,
    path_problem,
    raw_path_problem,
    resolve,
    visible_segments,
)
from rex_workers.config.model import StaticOptions

ROOT = "/srv/www"

# path → (kind, real path). Symlinks are entries whose real path differs.
FS = {
    "/srv/www": (DIR, "/srv/www"),
    "/srv/www/a.txt": (FILE, "/srv/www/a.txt"),
    "/srv/www/docs": (DIR, "/srv/www/docs"),
    "/srv/www/docs/index.html": (FILE, "/srv/www/docs/index.html"),
    "/srv/www/docs/index.htm": (FILE, "/srv/www/docs/index.htm"),
    "/srv/www/empty": (DIR, "/srv/www/empty"),
    "/srv/www/alias.txt": (FILE, "/srv/www/a.txt"),  # symlink inside the root
    "/srv/www/escape.txt": (FILE, "/etc/passwd"),  # symlink out of the root
    "/srv/www/sibling": (DIR, "/srv/www-private"),  # prefix of the root, not inside it
    "/srv/www/sibling/index.html": (FILE, "/srv/www-private/index.html"),
    "/srv/www/outdir": (DIR, "/srv/www/outdir"),
    "/srv/www/outdir/index.html": (FILE, "/etc/shadow"),  # index that escapes
    "/srv/www/.env": (FILE, "/srv/www/.env"),
    "/srv/www/.well-known": (DIR, "/srv/www/.well-known"),
    "/srv/www/.well-known/security.txt": (FILE, "/srv/www/.well-known/security.txt"),
    "/srv/www/.well-known/.hidden": (FILE, "/srv/www/.well-known/.hidden"),
    "/srv/www/fifo": (OTHER, "/srv/www/fifo"),
    "/srv/www/locked.txt": (DENIED, "/srv/www/locked.txt"),
    "/srv/www/dir-index": (DIR, "/srv/www/dir-index"),
    "/srv/www/dir-index/index.html": (DIR, "/srv/www/dir-index/index.html"),  # a directory
    "/srv/www/space dir": (DIR, "/srv/www/space dir"),
    "/srv/www/spa.html": (FILE, "/srv/www/spa.html"),
}


def lookup(path: str) -> Node | None:
    entry = FS.get(path)
    return Node(entry[0], entry[1]) if entry else None


def decide(path: str, **options) -> object:
    return resolve(ROOT, path, StaticOptions(**options), lookup)


def file_of(real: str, fs_path: str, name: str) -> File:
    return File(Node(FILE, real), fs_path, name)


@pytest.mark.parametrize(("path", "options", "expected"), [
    ("/a.txt", {}, file_of("/srv/www/a.txt", "/srv/www/a.txt", "a.txt")),
    ("/missing.txt", {}, None),
    ("/a.txt/", {}, None),  # a file is not a directory
    ("/docs", {}, Redirect("/docs/")),
    ("/space dir", {}, Redirect("/space%20dir/")),
    ("/docs/", {}, file_of("/srv/www/docs/index.html", "/srv/www/docs/index.html",
                           "index.html")),
    ("/docs/", {"index": ("index.htm", "index.html")},
     file_of("/srv/www/docs/index.htm", "/srv/www/docs/index.htm", "index.htm")),
    ("/", {}, None),  # no index.html in the root and no listing
    ("/", {"listing": True}, Listing(Node(DIR, "/srv/www"), "/")),
    ("/empty/", {}, None),
    ("/empty/", {"listing": True}, Listing(Node(DIR, "/srv/www/empty"), "/empty/")),
    ("/dir-index/", {}, None),  # an "index.html" that is a directory is no index
    ("/alias.txt", {}, file_of("/srv/www/a.txt", "/srv/www/alias.txt", "alias.txt")),
    ("/escape.txt", {}, Refuse(403, "symlink leads outside the root")),
    ("/escape.txt", {"follow_symlinks": True},
     file_of("/etc/passwd", "/srv/www/escape.txt", "escape.txt")),
    ("/sibling/", {}, Refuse(403, "symlink leads outside the root")),
    ("/outdir/", {}, Refuse(403, "symlink leads outside the root")),
    ("/.env", {}, None),
    ("/.env", {"dotfiles": True}, file_of("/srv/www/.env", "/srv/www/.env", ".env")),
    ("/.well-known/security.txt", {},
     file_of("/srv/www/.well-known/security.txt", "/srv/www/.well-known/security.txt",
             "security.txt")),
    ("/.well-known/.hidden", {}, None),
    ("/fifo", {}, None),
    ("/locked.txt", {}, Refuse(403, "permission denied")),
    ("/../etc/passwd", {}, Refuse(403, "'..' segment")),
    ("/a\\..\\b", {}, Refuse(403, "backslash")),
    ("/a.txt\0", {}, Refuse(403, "control character")),
    ("/C:/Windows/win.ini", {}, Refuse(403, "drive letter")),
    ("relative", {}, Refuse(403, "not an absolute path")),
])
def test_resolve(path, options, expected):
    assert decide(path, **options) == expected


@pytest.mark.parametrize(("raw", "problem"), [
    (b"/a.txt", None),
    (b"/docs/", None),
    (b"/100%25.txt", None),  # a literal "%" in a file name decodes to "%.t": harmless
    (b"/%2541.txt", None),  # "%41.txt" is a legal name; its second decoding "A.txt" too
    (b"/caf%C3%A9", None),
    (b"/a/./b", None),
    (b"/../x", "'..' segment"),
    (b"/a/../x", "'..' segment"),  # harmless after normalisation, but never sent by browsers
    (b"/%2e%2e/x", "'..' segment"),
    (b"/%2E%2e/x", "'..' segment"),
    (b"/.%2e/x", "'..' segment"),
    (b"/%252e%252e/x", "'..' segment"),
    (b"/%25252e%25252e/x", "'..' segment"),
    (b"/..%2fx", "'..' segment"),
    (b"/..%5cx", "backslash"),
    (b"/..%255cx", "backslash"),
    (b"/..\\x", "backslash"),
    (b"/%c0%ae%c0%ae/x", "invalid or overlong UTF-8"),
    (b"/%25c0%25ae/x", "invalid or overlong UTF-8"),
    (b"/%e0%80%ae/x", "invalid or overlong UTF-8"),
    (b"/\xff", "invalid or overlong UTF-8"),
    (b"/x%00.html", "NUL byte"),
    (b"/x%2500.html", "NUL byte"),
    (b"/x%0a", "control character"),
    (b"/C:/x", "drive letter"),
    (b"/c%3a%5cx", "backslash"),
    (b"/%2525252541", "percent-encoded more than three times"),
])
def test_raw_path_problem(raw, problem):
    assert raw_path_problem(raw) == problem


@pytest.mark.parametrize(("path", "problem"), [
    ("/", None),
    ("/a b/ü.txt", None),
    ("/...", None),  # three dots is a name, not a climb
    ("/..", "'..' segment"),
    ("/x/\x7f", "control character"),
    ("/d:", "drive letter"),
])
def test_path_problem(path, problem):
    assert path_problem(path) == problem


@pytest.mark.parametrize(("path", "dotfiles", "segments"), [
    ("/", False, []),
    ("/a//b/", False, ["a", "b"]),
    ("/.git/config", False, None),
    ("/a/.git", False, None),
    ("/.git/config", True, [".git", "config"]),
    ("/.well-known/acme-challenge/t", False, [".well-known", "acme-challenge", "t"]),
    ("/x/.well-known/t", False, None),  # only at the top, where RFC 8615 puts it
])
def test_visible_segments(path, dotfiles, segments):
    assert visible_segments(path, dotfiles) == segments


@pytest.mark.parametrize(("root", "real", "expected"), [
    ("/srv/www", "/srv/www", True),
    ("/srv/www", "/srv/www/a", True),
    ("/srv/www", "/srv/www-private/a", False),
    ("/srv/www", "/srv", False),
    ("/", "/etc/passwd", True),
])
def test_inside(root, real, expected):
    assert inside(root, real) is expected


@pytest.mark.parametrize(("name", "expected"), [
    ("spa.html", file_of("/srv/www/spa.html", "/srv/www/spa.html", "spa.html")),
    ("docs/index.html", file_of("/srv/www/docs/index.html", "/srv/www/docs/index.html",
                                "index.html")),
    ("missing.html", None),
    ("docs", None),  # a directory is not a document
    ("../etc/passwd", None),
    ("escape.txt", Refuse(403, "symlink leads outside the root")),
])
def test_fallback_file(name, expected):
    assert fallback_file(ROOT, name, StaticOptions(), lookup) == expected


@pytest.mark.parametrize(("path", "accept", "expected"), [
    ("/users/42", None, True),
    ("/users/42/", b"*/*", True),
    ("/", None, True),
    ("/app.js", b"*/*", False),
    ("/app.js", None, False),
    ("/user/john.doe", b"text/html,application/xhtml+xml,*/*;q=0.8", True),
    ("/user/john.doe", b"text/html;q=0", False),
    ("/favicon.ico", b"image/avif,image/webp,*/*", False),
])
def test_looks_like_client_route(path, accept, expected):
    assert looks_like_client_route(path, accept) is expected
