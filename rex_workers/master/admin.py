"""The admin listener: ``/status``, ``/metrics``, ``/ready``, ``/live``, served by the master.

Why the master: it is the one process that knows every worker, lives across
reloads and stays up while the workers drain, so ``/ready`` can answer 503
through a whole drain and ``/metrics`` can add up workers that have exited.
The master never imports gevent, so this is a small non-blocking server on
stdlib sockets that the master's own ``select`` loop drives: no thread, no
extra process, nothing that can block the loop that supervises the workers.

Strict and bounded: GET and HEAD only; a request head of at most
``MAX_HEAD`` bytes, parsed by httptools; one request per connection
(``Connection: close``); at most ``MAX_CLIENTS`` connections at once, each
with ``DEADLINE`` seconds to send its request and read the reply. A client
that breaks a rule gets a 4xx or is dropped; the master never waits for it.

May: bind one socket, accept, read, write, close. May not: block, import
gevent, or know what the answers say (the master passes one callable per path).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from http import HTTPStatus

import httptools

from .listeners import bind

MAX_HEAD = 8192
MAX_CLIENTS = 32
DEADLINE = 5.0  # seconds for one whole exchange; Prometheus' default scrape timeout is 10 s
READ_SIZE = 8192

Answer = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Answer]


class _Client:
    """One admin connection: read a head, then write one response and close."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head = 0  # bytes read so far
        self.complete = False
        self.out = memoryview(b"")  # the response still to send

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.complete = True


class AdminServer:
    def __init__(self, address: tuple[str, int], handlers: dict[str, Handler],
                 log: Callable[[str], None]) -> None:
        self.address = address
        self.handlers = handlers
        self.log = log
        self.sock = bind(address, "admin listener")  # BindError says the port and why
        self.sock.setblocking(False)
        self.clients: dict[int, _Client] = {}

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def sockets(self) -> list[socket.socket]:
        """Every descriptor this server holds: a forked worker must close them all."""
        return [self.sock, *(c.sock for c in self.clients.values())]

    def readers(self) -> list[int]:
        waiting = [fd for fd, c in self.clients.items() if not c.out]
        return waiting + ([self.sock.fileno()] if len(self.clients) < MAX_CLIENTS else [])

    def writers(self) -> list[int]:
        return [fd for fd, c in self.clients.items() if c.out]

    def handle(self, readable: set[int], writable: set[int]) -> None:
        """Do what ``select`` said can be done now, then drop clients past their deadline."""
        if self.sock.fileno() in readable:
            self._accept()
        for fd in [fd for fd in readable if fd in self.clients]:
            self._read(self.clients[fd])
        for fd in [fd for fd in writable if fd in self.clients]:
            self._write(self.clients[fd])
        now = time.monotonic()
        for client in [c for c in self.clients.values() if now > c.deadline]:
            self._close(client)  # too slow to ask or to read: not worth the master's time

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        self.sock.close()

    # -- one connection ---------------------------------------------------------------
    def _accept(self) -> None:
        while len(self.clients) < MAX_CLIENTS:
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: the next look tries again
            sock.setblocking(False)
            self.clients[sock.fileno()] = _Client(sock, time.monotonic() + DEADLINE)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        client.head += len(data)
        if client.head > MAX_HEAD:
            self._respond(client, (431, "text/plain", b"request head too large\n"))
            return
        try:
            client.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete; nothing here upgrades
        except httptools.HttpParserError:
            self._respond(client, (400, "text/plain", b"bad request\n"))
            return
        if client.complete:
            self._respond(client, self._answer(client))

    def _answer(self, client: _Client) -> Answer:
        method = client.parser.get_method()
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        try:
            path = httptools.parse_url(client.url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            return 400, "text/plain", b"bad request target\n"
        handler = self.handlers.get(path.rstrip("/") or "/")
        if handler is None:
            return 404, "text/plain", ("not found; try " + ", ".join(self.handlers) + "\n").encode()
        try:
            return handler()
        except Exception as exc:  # a bug in a report must not take the master down
            self.log(f"admin {path}: {type(exc).__name__}: {exc}")
            return 500, "text/plain", b"internal error (see the log)\n"

    def _respond(self, client: _Client, answer: Answer) -> None:
        status, content_type, body = answer
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode("latin-1")
        head_only = client.parser.get_method() == b"HEAD" if client.complete else False
        client.out = memoryview(head if head_only else head + body)
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(client)

    def _close(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()
