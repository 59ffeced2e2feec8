"""``wsgi.input`` and ``wsgi.errors``: the file-like objects PEP 3333 hands an app.

``Input`` reads the request body lazily from an iterator of byte pieces (the
connection's de-chunked ``body_pieces()``), so nothing is read, and no
``100 Continue`` sent, until the app asks; it keeps at most one piece plus
what the app asked for in memory. ``ErrorStream`` turns writes into error log
lines. No sockets and no gevent here: both wrap callables the caller supplies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


class Input:
    """A read-only binary stream over ``pieces``; EOF at the end of the body."""

    def __init__(self, pieces: Iterator[bytes], length: int | None = None) -> None:
        self._pieces = pieces
        self._buf = bytearray()
        self._eof = length == 0
        self._left = length  # bytes still expected when the length is known
        self._error: BaseException | None = None
        self.received = 0

    # -- filling the buffer ------------------------------------------------------------
    def _fill(self) -> bool:
        """Append the next piece to the buffer; False at the end of the body."""
        if self._eof:
            return False
        if self._error is not None:
            raise self._error
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._eof = True
            return False
        except Exception as exc:  # a 413/408/400 from the connection: same answer every read
            self._error = exc
            raise
        self.received += len(piece)
        self._buf += piece
        if self._left is not None:
            self._left -= len(piece)
            if self._left <= 0:
                self._finish()
        return True

    def _finish(self) -> None:
        # With a Content-Length the end-of-message event is already queued
        # behind the last piece; taking it now marks the body as fully read, so
        # the connection can be kept alive even if the app never reads to EOF.
        self._eof = True
        for _ in self._pieces:
            pass

    @property
    def exhausted(self) -> bool:
        return self._eof

    # -- the PEP 3333 methods ------------------------------------------------------------
    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buf)
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def read1(self, size: int = -1) -> bytes:
        """At most one piece: what ``io.BufferedReader`` users expect of a raw stream."""
        if not self._buf:
            self._fill()
        if size < 0:
            size = len(self._buf)
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        scanned = 0
        while True:
            end = self._buf.find(b"\n", scanned)
            if end >= 0:
                end += 1
                break
            scanned = len(self._buf)
            if 0 <= limit <= scanned or not self._fill():
                end = len(self._buf)
                break
        if 0 <= limit < end:
            end = limit
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Input:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass  # the server owns the body; PEP 3333 apps must not close it


# The wsgi.input of every request without a body. Safe to share: at EOF no method
# changes any state (nothing is read, the buffer stays empty).
NO_BODY = Input(iter(()), 0)


class ErrorStream:
    """``wsgi.errors``: text written here becomes error log lines, one per line."""

    def __init__(self, log: Callable[[str], None], prefix: str = "") -> None:
        self._log = log
        self._prefix = prefix
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log(self._prefix + line)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            self._log(self._prefix + self._pending)
            self._pending = ""
