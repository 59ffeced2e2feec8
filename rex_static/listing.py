"""Directory listings (opt-in with ``listing: true``).

``scan`` reads one directory (blocking I/O, no sockets) and applies the same
visibility rules as ``resolve``: dotfiles and symlinks leaving the root are
left out unless allowed. ``render`` is pure: names are HTML-escaped in text
and percent-encoded in links, so a file called ``<script>`` or
``javascript:x`` is only ever a name.
"""

from __future__ import annotations

import os
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import quote

from .resolve import inside

if TYPE_CHECKING:
    from rex_workers.config.model import StaticOptions


def scan(real_dir: str, root: str, opts: StaticOptions) -> list[tuple[str, bool]]:
    """``(name, is_dir)`` for each visible entry of ``real_dir``, sorted by name."""
    entries = []
    try:
        with os.scandir(real_dir) as it:
            for entry in it:
                visible = _visible(entry, root, opts)
                if visible is not None:
                    entries.append((entry.name, visible))
    except OSError:
        return []  # unreadable now (removed, permissions changed): an empty page
    return sorted(entries)


def _visible(entry: os.DirEntry, root: str, opts: StaticOptions) -> bool | None:
    """Whether ``entry`` is a directory, or None when it is not to be listed."""
    if entry.name.startswith(".") and not opts.dotfiles:
        return None
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return None  # not valid UTF-8: no request path could name it anyway
    try:
        leaves = entry.is_symlink() and not inside(root, os.path.realpath(entry.path))
        if leaves and not opts.follow_symlinks:
            return None
        return entry.is_dir()
    except OSError:
        return None  # vanished while listing


def render(path: str, entries: list[tuple[str, bool]]) -> bytes:
    """The HTML page listing ``entries`` of the directory at request path ``path``."""
    title = escape(f"Index of {path}")
    items = [] if path == "/" else ['<li><a href="../">../</a></li>']
    for name, is_dir in entries:
        slash = "/" if is_dir else ""
        # safe="": ":" is encoded too, so no name can read as a URL scheme.
        href = escape(quote(name, safe="") + slash)
        items.append(f'<li><a href="{href}">{escape(name + slash)}</a></li>')
    body = "\n".join(items)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n<ul>\n{body}\n</ul>\n<hr><p>rex</p></body></html>\n"
    ).encode()
