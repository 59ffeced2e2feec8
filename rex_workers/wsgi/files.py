"""``wsgi.file_wrapper`` (PEP 3333 "Optional Platform-Specific File Handling").

An app returns ``environ["wsgi.file_wrapper"](open(path, "rb"))``. When Rex
finds its own wrapper around a regular file, ``wsgi.py`` sends the file with
``rex_static``'s zero-copy sendfile pump (which copies in bounded blocks where
the kernel cannot sendfile, as on TLS). Anything else (pipes, BytesIO,
middleware that re-wraps the iterable) is iterated, which the wrapper also
supports. No sockets and no gevent here.
"""

from __future__ import annotations

import os
import stat
from typing import IO

BLOCK_SIZE = 65536


class FileWrapper:
    """An iterable over ``filelike``'s blocks that also exposes the file for sendfile."""

    def __init__(self, filelike: IO[bytes], block_size: int = BLOCK_SIZE) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            # PEP 3333: the wrapper's close() closes the file; the server calls it.
            self.close = filelike.close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.block_size)
        if not data:
            raise StopIteration
        return data

    def file_span(self) -> tuple[int, int, int] | None:
        """(fd, offset, bytes left) for a regular file; None when it must be iterated.

        Transmission starts at the file's current position (PEP 3333).
        """
        try:
            fd = self.filelike.fileno()
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            offset = self.filelike.tell()
        except (AttributeError, OSError, ValueError):
            return None  # not a real file (BytesIO raises UnsupportedOperation, an OSError)
        return fd, offset, max(info.st_size - offset, 0)
