"""Idle keep-alive connections without a greenlet: parked on a watcher until they are needed.

Socket code (gevent). A greenlet waiting in ``recv`` keeps about 8 KB however
shallow its wait: gevent's ``Greenlet``, its C stack slice copied to the heap,
and a page of CPython's frame stack (each greenlet has its own chunk). With
thousands of idle keep-alive connections (SPEC §5) that is most of a worker's
memory. So a connection that stays idle ``PARK_AFTER`` seconds lets its
greenlet end: a ``Ticket`` keeps a read watcher on its socket and a timer at
its idle deadline, and whichever fires first starts a new greenlet in the
worker's pool that goes on waiting where the old one stopped (``ClientConn.resume``).
A busy connection never parks: its next request comes well within ``PARK_AFTER``.

A parked connection stays what it was for the rest of the worker: counted in
``open_connections``, listed in ``connections`` with ``idle`` set (a drain
shuts it down, which wakes it), and holding its place in the pool (the
connection cap, and what a drain waits for): the ticket takes a pool slot
before the greenlet gives its own back, and ``Pool.kill`` kills tickets too.

May: watch sockets, take and give back pool slots. May not: read or write a
socket (the resumed connection does), or decide when to park (``ClientConn``).
"""

from __future__ import annotations

import time

from gevent.pool import Pool, PoolFull
from gevent.server import StreamServer

PARK_AFTER = 0.5  # seconds idle before a keep-alive connection gives up its greenlet


class Lot:
    """The parked connections of a worker: tickets by socket."""

    def __init__(self, pool: Pool, loop) -> None:
        self.pool = pool
        self.loop = loop
        self.tickets: dict = {}  # socket -> Ticket

    def park(self, conn, left: float) -> bool:
        """Park ``conn`` for at most ``left`` more seconds; False when the pool has no slot
        to spare for the ticket (the connection then waits in its greenlet, as before)."""
        ticket = Ticket(self, conn, time.monotonic() + left)
        try:
            self.pool.add(ticket, blocking=False)
        except PoolFull:
            return False
        loop = self.loop
        ticket.io = loop.io(conn.sock.fileno(), 1)
        ticket.timer = loop.timer(max(left, 0.0))
        ticket.io.start(ticket.wake)
        ticket.timer.start(ticket.wake)
        self.tickets[conn.sock] = ticket
        return True


class Ticket:
    """One parked connection's place: its watchers and its pool slot."""

    __slots__ = ("conn", "due", "io", "lot", "timer")

    def __init__(self, lot: Lot, conn, due: float) -> None:
        self.lot = lot
        self.conn = conn
        self.due = due
        self.io = self.timer = None

    def _leave(self) -> None:
        self.io.stop()
        self.timer.stop()
        self.io = self.timer = None
        lot = self.lot
        del lot.tickets[self.conn.sock]
        lot.pool.discard(self)  # gives its slot back, for the greenlet spawned next

    def wake(self) -> None:
        """Bytes (or EOF) arrived, or the idle deadline passed: serve on in a new greenlet.

        Runs in the hub; the slot just given back is free, so ``spawn`` does not wait."""
        self._leave()
        self.lot.pool.spawn(self.conn.resume, self.due - time.monotonic())

    def kill(self, exception=None, block: bool = False, timeout=None) -> None:
        """``Pool.kill`` (the worker stopping now): close the connection at once."""
        if self.io is not None:
            self._leave()
            self.conn.abandon()


class ParkingServer(StreamServer):
    """A StreamServer that leaves a parked connection's socket open when its handler returns."""

    def __init__(self, listener, handle, lot: Lot, **kwargs) -> None:
        super().__init__(listener, handle, **kwargs)
        self.lot = lot

    def do_close(self, sock, *args) -> None:
        if sock not in self.lot.tickets:
            sock.close()
