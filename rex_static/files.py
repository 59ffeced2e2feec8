"""The file system as the static site sees it: look paths up, open files safely.

Blocking system calls only (stat, open, read): no sockets, no gevent, no HTTP.
``lookup`` answers ``resolve`` with where a path really leads; ``open_file``
opens a file that ``resolve`` admitted and proves the descriptor is that file,
closing the window between checking a path and opening it (someone swapping
a directory for a symlink in between).
"""

from __future__ import annotations

import errno
import os
import stat

from .resolve import DENIED, DIR, FILE, OTHER, Node, inside

# O_PATH (Linux) opens any kind of file without reading it: no blocking on a
# FIFO, no side effects on a device, and the descriptor names one object we
# can both fstat and ask for its path.
_O_PATH = getattr(os, "O_PATH", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# The process, not the path, is in trouble: let the caller answer 503.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)


class Changed(Exception):
    """The file at a vetted path is no longer the vetted file (and may not be served)."""


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must stay equal for cached metadata to still describe the file."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _kind(st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return FILE
    return DIR if stat.S_ISDIR(st.st_mode) else OTHER


def _fd_path(fd: int, fallback: str) -> str:
    """The path the kernel has for an open descriptor (Linux /proc), else realpath."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)  # no /proc (macOS, a bare chroot): best effort


class FileSystem:
    def __init__(self, root: str, follow_symlinks: bool) -> None:
        self.root = root  # absolute and symlink-free
        self.follow_symlinks = follow_symlinks

    def lookup(self, path: str) -> Node | None:
        """What ``path`` is and where it leads; None when nothing servable is there."""
        try:
            if _O_PATH:
                fd = os.open(path, _O_PATH | os.O_CLOEXEC)
                try:
                    st = os.fstat(fd)
                    real = _fd_path(fd, path)
                finally:
                    os.close(fd)
            else:
                st = os.stat(path)
                real = os.path.realpath(path)
        except PermissionError:
            return Node(DENIED, path)
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                raise
            # Missing, a file used as a directory, a symlink loop, a name too
            # long, or the disk failing: in every case there is nothing to send.
            return None
        return Node(_kind(st), real, st)

    def open_file(self, node: Node) -> tuple[int, os.stat_result]:
        """A read descriptor for the admitted file ``node``, with its current stat.

        Raises ``Changed`` when the path now holds something we did not vet
        (the caller resolves it again) and OSError when it cannot be opened.
        """
        fd = os.open(node.real, _O_READ)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Changed(f"{node.real} is no longer a regular file")
            vetted = node.stat is not None and (st.st_dev, st.st_ino) == (node.stat.st_dev,
                                                                          node.stat.st_ino)
            # Another object now (replaced, or a directory swapped for a symlink):
            # it is only ours to serve if it too is in the root.
            if not vetted and not self.follow_symlinks \
                    and not inside(self.root, _fd_path(fd, node.real)):
                raise Changed(f"{node.real} now leads outside the root")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def read_small(self, node: Node, limit: int) -> bytes | None:
        """The whole content of ``node`` when it is still the same file of at most ``limit``."""
        try:
            fd, st = self.open_file(node)
        except (OSError, Changed):
            return None  # served from disk instead, which re-checks and reports
        try:
            if node.stat is None or identity(st) != identity(node.stat) or st.st_size > limit:
                return None
            data = os.pread(fd, st.st_size + 1, 0)
            # One more byte than expected means the file grew without a new mtime
            # yet: do not cache a body that disagrees with the stat.
            return data if len(data) == st.st_size else None
        finally:
            os.close(fd)
