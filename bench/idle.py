"""Memory of one worker holding many idle keep-alive connections.

The bench process opens the connections itself: each one sends a single
request, reads the whole response and then stays open, idle in keep-alive,
as a browser's spare connections do. Then the worker's VmRSS is read. The
worker is the master's only child, found through /proc, never by name.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from dataclasses import dataclass

from .procs import children, cmdline, vm_rss_mb

CONNECT_TIMEOUT = 10.0
FD_MARGIN = 256  # descriptors the bench needs besides the idle sockets


class IdleError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class IdleResult:
    worker_pid: int
    connections: int  # opened and answered
    still_open: int  # of those, still open when the RSS was read
    rss_before_mb: float
    rss_mb: float
    seconds: float  # time to open them all
    error: str = ""  # why fewer than asked for were opened


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` if the hard limit allows.

    Returns the soft limit now in force. Children (nginx, Rex) inherit it,
    so their workers can hold as many connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def worker_of(master: int) -> int:
    """The single worker process of ``master``: the bench runs every server with one."""
    kids = children(master)
    workers = [pid for pid in kids if "worker" in cmdline(pid)] or kids
    if len(workers) != 1:
        titles = ", ".join(f"{pid} ({cmdline(pid)!r})" for pid in kids) or "none"
        raise IdleError(f"expected one worker under pid {master}, found: {titles}")
    return workers[0]


def measure(master: int, port: int, path: str, count: int) -> IdleResult:
    """Open ``count`` keep-alive connections to ``port``, then read the worker's RSS."""
    worker = worker_of(master)
    before = vm_rss_mb(worker)
    sockets: list[socket.socket] = []
    error = ""
    started = time.monotonic()
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        try:
            for _ in range(count):
                sockets.append(_one_request(port, request))
        except (OSError, IdleError) as exc:
            error = f"stopped after {len(sockets)} connections: {exc}"
        seconds = time.monotonic() - started
        rss = vm_rss_mb(worker)
        return IdleResult(worker, len(sockets), _count_open(sockets), before, rss, seconds,
                          error)
    finally:
        for sock in sockets:
            sock.close()


def _one_request(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    try:
        sock.sendall(request)
        _read_response(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_response(sock: socket.socket) -> None:
    """Read one response framed by Content-Length (the bench's files always have one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise IdleError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200"):
        raise IdleError(f"unexpected status line {lines[0]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise IdleError("response without Content-Length")
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise IdleError("connection closed inside the body")
        body += chunk


def _count_open(sockets: list[socket.socket]) -> int:
    """Sockets with nothing to read: an idle keep-alive the server has not closed."""
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLIN)
    ended = 0
    with contextlib.suppress(OSError):
        ended = len(poller.poll(0))
    return len(sockets) - ended
