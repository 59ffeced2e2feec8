"""Body bytes held between a fast side and a slow one: memory first, then an unlinked temp file.

The proxy's buffering (docs/proxying.md): a request body read whole before an
upstream is chosen, and a response read ahead of a client that is slower than
its upstream. A ``Spool`` keeps bytes in memory up to its own budget and while
the worker's ``Budget`` has room, then writes the rest to a temp file that has
no name (``O_TMPFILE``; elsewhere unlinked at once), so it can never outlive
its request, a crashed worker included. Bytes come out in the order they went
in: memory chunks, then spans of the file, which the connection sends with
sendfile.

May: do blocking file I/O on the temp file (page-cache writes, as nginx's), wait
in the hub for the other side. May not: touch sockets or know HTTP.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections import deque

import gevent
from gevent.event import Event

from ..http.message import FileRegion
from ..http.request import Abort

YIELD_EVERY = 8 * 1024 * 1024  # bytes a producer reads ahead before others get a turn
# Where O_TMPFILE is refused: file systems without it, kernels before 3.11.
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})


REQUEST, RESPONSE = 0, 1  # which way a spooled body goes (an index into the counters)


class Budget:
    """One worker's buffered bytes: the memory all spools share, and what went to disk."""

    __slots__ = ("disk", "limit", "memory", "spilled_bodies", "spilled_bytes")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.memory = 0  # bytes held in memory now, by every spool of the worker
        self.disk = 0  # bytes held in temp files now
        # Counters for the metrics, [requests, responses]: bytes ever written to temp
        # files, and bodies that went to disk at all.
        self.spilled_bytes = [0, 0]
        self.spilled_bodies = [0, 0]

    def take(self, size: int) -> bool:
        if self.memory + size > self.limit:
            return False
        self.memory += size
        return True


def open_temp(directory: str | None) -> int:
    """A read-write descriptor of a new file with no name in ``directory``."""
    directory = directory or tempfile.gettempdir()
    flags = os.O_RDWR | os.O_CLOEXEC
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            return os.open(directory, flags | tmpfile, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
    fd, path = tempfile.mkstemp(prefix="rex-body-", dir=directory)
    os.unlink(path)
    return fd


class Spool:
    """A FIFO of body bytes for one request or response (see the module docstring).

    The producer calls ``write`` (and, for a response, ``wait_room`` first),
    then ``end`` or ``fail``; the consumer calls ``take`` until it returns None,
    or ``parts`` once everything is in. ``max_file``: bytes the temp file may
    hold before the producer must wait for the consumer to catch up (0: no
    bound; request bodies are bounded by ``limits.body_bytes`` instead).
    """

    __slots__ = ("_budget", "_chunks", "_fd", "_held", "_max_file", "_memory", "_paced",
                 "_read", "_ready", "_room", "_spilled", "_temp_dir", "_way", "_written", "ended",
                 "error", "size")

    def __init__(self, budget: Budget, memory: int, temp_dir: str | None,
                 max_file: int = 0, way: int = REQUEST) -> None:
        self._budget = budget
        self._way = way
        self._memory = memory
        self._temp_dir = temp_dir
        self._max_file = max_file
        self._chunks: deque[bytes] = deque()
        self._held = 0  # bytes in ``_chunks``
        self._fd = -1
        self._spilled = False  # counted in the budget's spilled bodies
        self._read = self._written = 0  # the consumer's and the producer's file offsets
        self._ready = Event()  # set when there is something to take (or the end)
        self._room = Event()  # set when a full temp file has been caught up with
        self.size = 0  # bytes written in all
        self._paced = 0  # ``size`` when the producer last gave others a turn
        self.ended = False
        self.error: BaseException | None = None

    # -- the producer -------------------------------------------------------------
    def write(self, data) -> None:
        """Keep ``data`` (copied): in memory while there is room, else in the temp file."""
        size = len(data)
        if not size:
            return
        self.size += size
        if not self._written and self._held + size <= self._memory and self._budget.take(size):
            self._chunks.append(bytes(data))
            self._held += size
        else:
            self._spill(data)
        self._ready.set()

    def open(self) -> None:
        """Make the temp file now (OSError if it cannot be): a producer that must not fail
        half-way learns before it starts."""
        if self._fd < 0:
            self._fd = open_temp(self._temp_dir)

    def _spill(self, data) -> None:
        budget = self._budget
        self.open()
        if not self._spilled:
            self._spilled = True
            budget.spilled_bodies[self._way] += 1
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self._written)
            self._written += n
            view = view[n:]
        budget.disk += len(data)
        budget.spilled_bytes[self._way] += len(data)

    def wait_room(self) -> None:
        """Before the producer reads more: wait while the temp file is full (``max_file``).

        Also gives the other greenlets a turn every ``YIELD_EVERY`` bytes: an
        upstream that always has data ready would otherwise never let the hub run
        (reads that find data do not wait), and no timeout could fire meanwhile.
        """
        while self._max_file and self._written >= self._max_file and not self.error:
            self._room.clear()
            self._room.wait()
        if self.size - self._paced >= YIELD_EVERY:
            self._paced = self.size
            gevent.sleep(0)

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    def fail(self, exc: BaseException) -> None:
        """The producer cannot complete: the consumer gets ``Abort`` once it has taken the rest."""
        self.error = exc
        self._ready.set()
        self._room.set()

    # -- the consumer -------------------------------------------------------------
    def take(self) -> bytes | FileRegion | None:
        """The next piece in order, waiting for the producer; None at the end."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._held -= len(data)
                self._budget.memory -= len(data)
                return data
            if self._fd >= 0:
                if self._read < self._written:
                    start, self._read = self._read, self._written
                    return FileRegion(self._fd, start, self._written - start)
                if self._written and not self.ended:
                    self._rewind()
            if self.error is not None:
                raise Abort() from self.error
            if self.ended:
                return None
            self._ready.clear()
            self._ready.wait()

    def _rewind(self) -> None:
        """All of the file was sent: start it over, so its size stays within ``max_file``."""
        os.ftruncate(self._fd, 0)
        self._budget.disk -= self._written
        self._read = self._written = 0
        self._room.set()

    @property
    def empty(self) -> bool:
        """Nothing left to take (now: the producer may still write more)."""
        return not self._chunks and self._read >= self._written

    def parts(self) -> list[bytes | FileRegion]:
        """Everything held, in order, without taking it (a request body, to send or resend)."""
        parts: list[bytes | FileRegion] = list(self._chunks)
        if self._written:
            parts.append(FileRegion(self._fd, 0, self._written))
        return parts

    def close(self) -> None:
        """Give back the memory and the temp file (idempotent)."""
        self._budget.memory -= self._held
        self._held = 0
        self._chunks.clear()
        if self._fd >= 0:
            self._budget.disk -= self._written
            self._written = self._read = 0
            os.close(self._fd)
            self._fd = -1
        self._room.set()
