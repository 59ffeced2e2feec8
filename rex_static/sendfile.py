"""The byte pump: a span of an open file → a client socket.

Socket code and nothing else: no HTTP, no paths, no policy. ``os.sendfile``
moves the bytes inside the kernel (zero-copy); gevent keeps the socket
non-blocking, so when its buffer is full sendfile raises EAGAIN and the
greenlet waits in the hub for writability instead of blocking the worker.
gevent's own ``socket.sendfile`` is not used: it copies through ``send``.

Where the kernel cannot sendfile to the socket (TLS encrypts in user space;
macOS and some file systems refuse), the pump copies with ``pread`` and
``sendall`` in fixed blocks, so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

import gevent
from gevent.socket import wait_write

from rex_workers.http.wire import BLOCK_SIZE

# Bytes sent without ever waiting before other greenlets get a turn: a fast
# client on loopback can drain a huge file without sendfile hitting EAGAIN.
YIELD_EVERY = 8 * 1024 * 1024

_MSG_MORE = getattr(socket, "MSG_MORE", 0)
# errnos with which sendfile says "not for this pair", before any byte moved.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK,
                          getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})


class _Unsupported(Exception):
    """sendfile refused this socket/file pair; copy instead."""


def can_sendfile(sock) -> bool:
    """Can the kernel write this socket's bytes itself? Not for TLS (SSLSocket)."""
    return hasattr(os, "sendfile") and not hasattr(sock, "do_handshake")


def more_flag(sock) -> int:
    """MSG_MORE for a head that sendfile follows on ``sock`` (0 where it does not apply).

    MSG_MORE lets the kernel put the head and the first file bytes in one TCP
    segment instead of a tiny segment of its own.
    """
    return _MSG_MORE if can_sendfile(sock) else 0


def send_file(sock, fd: int, offset: int, count: int,
              wait: Callable[[int], float] | None = None) -> int:
    """Send ``count`` bytes of ``fd`` from ``offset``; returns how many were sent.

    Fewer than ``count`` only when the file is shorter than expected (it was
    truncated meanwhile). Each wait for the peer lasts at most ``wait(sent)``
    seconds (the bytes sent so far: a caller may ask for a minimum rate), or the
    socket's timeout, then raises ``TimeoutError``; other socket errors propagate.
    """
    if count <= 0:
        return 0
    if wait is None:
        timeout = sock.gettimeout()

        def wait(sent: int) -> float | None:
            return timeout

    if can_sendfile(sock):
        try:
            return _sendfile(sock, fd, offset, count, wait)
        except _Unsupported:
            pass  # nothing was sent yet: the copy below starts from the beginning
    return _copy(sock, fd, offset, count, wait)


def _sendfile(sock, fd: int, offset: int, count: int, wait: Callable[[int], float]) -> int:
    out = sock.fileno()
    sent = since_wait = 0
    while sent < count:
        try:
            n = os.sendfile(out, fd, offset + sent, count - sent)
        except BlockingIOError:
            wait_write(out, timeout=wait(sent),
                       timeout_exc=TimeoutError("client stopped reading"))
            since_wait = 0
            continue
        except OSError as exc:
            if sent == 0 and exc.errno in _UNSUPPORTED:
                raise _Unsupported(exc) from exc
            raise
        if n == 0:
            break  # end of file before ``count``
        sent += n
        since_wait += n
        if since_wait >= YIELD_EVERY:
            gevent.sleep(0)
            since_wait = 0
    return sent


def _copy(sock, fd: int, offset: int, count: int, wait: Callable[[int], float]) -> int:
    sent = 0
    while sent < count:
        block = os.pread(fd, min(BLOCK_SIZE, count - sent), offset + sent)
        if not block:
            break
        view = memoryview(block)
        while view:
            sock.settimeout(wait(sent))
            n = sock.send(view)
            view = view[n:]
            sent += n
    return sent
