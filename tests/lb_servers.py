"""Upstream servers for the load-balancing end-to-end tests (issue 7).

Test helpers only: blocking sockets and one thread per connection, all on
127.0.0.1. A ``Backend`` answers every request with its own name, so a test
reads which upstream served a response from the response itself. It can be
stopped (connections are then refused) and started again on the same port,
misbehave on purpose (``mode``), or park requests until the test lets them go
(``hold``). A ``BlackHole`` is a port where connecting never completes.
"""

from __future__ import annotations

import json
import socket
import threading
import time

# What a Backend does with each connection.
ANSWER = "answer"  # answer every request, keeping the connection open
CLOSE = "close"  # accept, then close at once without reading anything
READ_CLOSE = "read_close"  # read the whole request, then close without answering


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # never connected or already shut: closing is all that is left
    sock.close()


def read_request(f) -> tuple[str, str, bytes] | None:
    """(method, target, body) of the next request on buffered file ``f``; None at EOF."""
    line = f.readline()
    if not line:
        return None
    method, target, _version = line.decode("latin-1").split(" ", 2)
    length = 0
    while (field := f.readline()) not in (b"\r\n", b""):
        name, _, value = field.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return method, target, f.read(length) if length else b""


class Backend:
    """A named HTTP/1.1 upstream that records what it was sent."""

    def __init__(self, name: str, *, mode: str = ANSWER, port: int = 0,
                 hold: threading.Event | None = None) -> None:
        self.name = name
        self.mode = mode
        self.port = port
        self.hold = hold  # while clear, every request waits before it is answered
        self.hits: list[tuple[str, str, bytes]] = []  # (method, target, body) read
        self.connections = 0
        self.parked = 0  # requests waiting on ``hold`` right now
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Backend:
        """Listen (again) on ``port``; the first start picks a free one."""
        listener = socket.socket()
        # The same port again after stop(): connections from the last run may
        # still be in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones (Rex's pooled ones too)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _shut(listener)  # shutdown wakes the thread blocked in accept()
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            _shut(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode != CLOSE:
                self._answer_all(conn)
        except (OSError, ValueError):
            pass  # Rex hung up, or stop() cut the connection
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _answer_all(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        while (request := read_request(f)) is not None:
            with self._lock:
                self.hits.append(request)
            if self.mode == READ_CLOSE:
                return
            if self.hold is not None and not self.hold.is_set():
                with self._lock:
                    self.parked += 1
                self.hold.wait(30)  # bounded: a failed test must not leave it forever
                with self._lock:
                    self.parked -= 1
            method, target, _body = request
            payload = json.dumps({"name": self.name, "method": method,
                                  "path": target}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload))


class BlackHole:
    """A listening port whose accept queue is full: a new connect() hangs until it times out.

    A ``listen(0)`` socket queues one connection; once that is taken by a
    connection of our own that nobody accepts, Linux drops every further SYN,
    and the client retransmits until its connect timeout.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(0)
        self._fillers: list[socket.socket] = []
        # Fill until a probe times out, so the hole is known to work before use.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                return
            self._fillers.append(probe)
        raise AssertionError(f"port {port} never stopped completing connections")

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self._listener.close()
