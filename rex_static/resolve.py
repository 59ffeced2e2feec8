"""Request path → what to serve: a file, a redirect, a listing, a refusal, or nothing.

Pure policy. The file system is seen only through the ``lookup`` callable the
caller passes (``files.FileSystem.lookup`` when serving, a dict in tests): it
says what a path is and where it really lives once symlinks are resolved.
Everything that decides whether a path may be served lives here, so the
security rules can be read, and tested, in one place:

- the raw path is re-checked on its own (defence in depth, not trusting the
  connection handler's normalisation): ``..`` in any spelling, however many
  times percent-encoded, backslashes, NUL, invalid or overlong UTF-8 and drive
  letters never reach the file system (``StaticSite`` then steps aside, so
  the routes decide as on an instance without a root); the decoded path with
  any of them is refused;
- a resolved path must stay under the root unless ``follow_symlinks``;
- dotfiles are hidden unless ``dotfiles`` (``/.well-known/`` always visible).

``None`` means "no file here": the caller lets the routes answer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes

from .negotiate import accepts_html

if TYPE_CHECKING:
    from rex_workers.config.model import StaticOptions

FILE, DIR, OTHER, DENIED = "file", "dir", "other", "denied"
FORBIDDEN = 403

# RFC 8615: the one dot-directory every site must be able to serve (ACME
# challenges, security.txt), whatever ``dotfiles`` says.
WELL_KNOWN = ".well-known"

# A client that encodes a path more than this many times is not a browser.
MAX_DECODINGS = 3

# Searched over the whole path at once: these run on every request, so one search
# finds whether any hostile spelling is there, and only then which one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOT_DOT = re.compile(r"/\.\.(?:/|$)")
_DRIVE = re.compile(r"/[A-Za-z]:")
_ANY = re.compile(r"[\x00-\x1f\x7f\\]|/\.\.(?:/|$)|/[A-Za-z]:")
# Characters kept as they are when a path is written into a Location header:
# RFC 3986 §3.3 pchar without "%", plus "/".
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


@dataclass(frozen=True, slots=True)
class Node:
    """What the file system says about one path."""

    kind: str  # FILE, DIR, OTHER (fifo, socket, device) or DENIED (no permission)
    real: str  # absolute and symlink-free: where the path really leads
    stat: os.stat_result | None = None


Lookup = Callable[[str], "Node | None"]


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    reason: str  # for the log; never sent to the client


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str  # path only, already percent-encoded; the caller adds the query


@dataclass(frozen=True, slots=True)
class File:
    node: Node
    fs_path: str  # the path as requested under the root: siblings (x.br) live beside it
    name: str  # the file name the client asked for: its extension picks the type


@dataclass(frozen=True, slots=True)
class Listing:
    node: Node
    path: str  # the request path, for the page's title and links


Decision = Refuse | Redirect | File | Listing | None


# -- hostile spellings --------------------------------------------------------
def path_problem(path: str) -> str | None:
    """Why a decoded path must not reach the file system, or None."""
    if not path.startswith("/"):
        return "not an absolute path"
    if _ANY.search(path) is None:
        return None
    if _CONTROL.search(path):
        return "control character"
    if "\\" in path:
        return "backslash"  # a separator on Windows, so "..\\" would climb there
    if _DOT_DOT.search(path):
        return "'..' segment"
    if _DRIVE.search(path):
        return "drive letter"
    return None


def raw_path_problem(raw_path: bytes) -> str | None:
    """Why the raw request path is hostile, or None.

    Checks the path as sent and again after each of up to ``MAX_DECODINGS``
    percent-decodings: ``%252e%252e`` is harmless to us (we decode once) but is
    exactly the spelling that defeats a component decoding twice, so no client
    gets to send it. Strict UTF-8 refuses overlong forms such as ``%c0%ae``.
    """
    data = raw_path
    for _ in range(MAX_DECODINGS + 1):
        if b"\0" in data:
            return "NUL byte"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid or overlong UTF-8"
        problem = path_problem(text)
        if problem is not None:
            return problem
        if b"%" not in data:
            return None  # nothing left to decode
        decoded = unquote_to_bytes(data)
        if decoded == data:
            return None
        data = decoded
    return "percent-encoded more than three times"


def visible_segments(path: str, dotfiles: bool) -> list[str] | None:
    """The path's non-empty segments, or None when a dotfile rule hides it."""
    segments = [s for s in path.split("/") if s]
    if not dotfiles:
        for i, segment in enumerate(segments):
            if segment.startswith(".") and not (i == 0 and segment == WELL_KNOWN):
                return None
    return segments


def inside(root: str, real: str) -> bool:
    """Is ``real`` the root or below it? (Both absolute and symlink-free.)"""
    return real == root or real.startswith(root.rstrip("/") + "/")


def admit(node: Node, root: str, opts: StaticOptions) -> Refuse | None:
    """A refusal when ``node`` exists but may not be served from this root."""
    if node.kind == DENIED:
        return Refuse(FORBIDDEN, "permission denied")
    if not opts.follow_symlinks and not inside(root, node.real):
        return Refuse(FORBIDDEN, "symlink leads outside the root")
    return None


# -- decisions ------------------------------------------------------------------
def _join(root: str, segments: list[str]) -> str:
    # Joined by hand: os.path.join would restart at a segment that looks absolute.
    return root.rstrip("/") + "/" + "/".join(segments) if segments else root


def resolve(root: str, path: str, opts: StaticOptions, lookup: Lookup) -> Decision:
    """What a GET of ``path`` (decoded, dot-normalised) serves from ``root``."""
    problem = path_problem(path)
    if problem is not None:
        return Refuse(FORBIDDEN, problem)
    segments = visible_segments(path, opts.dotfiles)
    if segments is None:
        return None  # hidden files are absent files: a route may still answer
    fs_path = _join(root, segments)
    node = lookup(fs_path)
    if node is None:
        return None
    refusal = admit(node, root, opts)
    if refusal is not None:
        return refusal
    if node.kind == FILE:
        # "/file.txt/" names a directory that does not exist (POSIX ENOTDIR).
        return None if path.endswith("/") else File(node, fs_path, segments[-1])
    if node.kind != DIR:
        return None  # fifos, sockets and devices are never served
    if not path.endswith("/"):
        # Relative links in the index page resolve against "/dir/", not "/".
        # Built from the segments, so it can never start with "//" (which a
        # browser would read as another host: an open redirect).
        return Redirect(quote("/" + "/".join(segments), safe=_PATH_SAFE) + "/")
    return _directory(root, path, fs_path, node, opts, lookup)


def below_mount(path: str, segments: int) -> tuple[str, str]:
    """``path`` split after its first ``segments`` segments: the mount, the path below it.

    A ``static:`` route serves "/static/css/a.css" as "/css/a.css" of its
    directory (the mount "/static" is the route's literal prefix). The path
    below is "" when ``path`` is the mount itself, which is then a directory
    without its slash.
    """
    parts = path.split("/")
    rest = parts[segments + 1:]
    return "/".join(parts[: segments + 1]), ("/" + "/".join(rest) if rest else "")


def remount(decision: Decision, mount: str) -> Decision:
    """A decision about the path below ``mount`` in the terms of the whole request path."""
    if isinstance(decision, Redirect):
        return Redirect(quote(mount, safe=_PATH_SAFE) + decision.location)
    if isinstance(decision, Listing):
        return Listing(decision.node, mount + decision.path)
    return decision


def _directory(root: str, path: str, fs_path: str, node: Node, opts: StaticOptions,
               lookup: Lookup) -> Decision:
    for name in opts.index:
        child = lookup(f"{fs_path.rstrip('/')}/{name}")
        if child is None or child.kind not in (FILE, DENIED):
            continue
        return admit(child, root, opts) or File(child, f"{fs_path.rstrip('/')}/{name}", name)
    return Listing(node, path) if opts.listing else None


def fallback_file(root: str, name: str, opts: StaticOptions, lookup: Lookup) -> Decision:
    """The SPA fallback document ``name`` (relative to the root, from the config)."""
    segments = [s for s in name.split("/") if s]
    if not segments or ".." in segments:
        return None
    fs_path = _join(root, segments)
    node = lookup(fs_path)
    if node is None or node.kind not in (FILE, DENIED):
        return None
    return admit(node, root, opts) or File(node, fs_path, segments[-1])


def looks_like_client_route(path: str, accept: bytes | None) -> bool:
    """Should a miss on ``path`` get the SPA's document rather than a 404?

    Yes for a browser navigating (``Accept`` names text/html) and for paths
    whose last segment has no extension ("/users/42"); no for "/app.js"
    fetched by a script tag, so a missing asset stays a visible 404.
    """
    if accepts_html(accept):
        return True
    last = path.rsplit("/", 1)[-1]
    return not os.path.splitext(last)[1]
