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

import gevent
from gevent.socket import wait_write

from rex_workers.http.wire import BLOCK_SIZE, send_all

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


def send_head(sock, head: bytes, file_follows: bool) -> None:
    """Send a response head; with MSG_MORE when sendfile follows.

    MSG_MORE lets the kernel put the head and the first file bytes in one
    TCP segment instead of a tiny segment of its own.
    """
    if file_follows and _MSG_MORE and can_sendfile(sock):
        send_all(sock, head, _MSG_MORE)
    else:
        send_all(sock, head)


def send_file(sock, fd: int, offset: int, count: int) -> int:
    """Send ``count`` bytes of ``fd`` from ``offset``; returns how many were sent.

    Fewer than ``count`` only when the file is shorter than expected (it was
    truncated meanwhile). Waits for the client at most the socket's timeout
    per wait and then raises ``TimeoutError``; other socket errors propagate.
    """
    if count <= 0:
        return 0
    if can_sendfile(sock):
        try:
            return _sendfile(sock, fd, offset, count)
        except _Unsupported:
            pass  # nothing was sent yet: the copy below starts from the beginning
    return _copy(sock, fd, offset, count)


def _sendfile(sock, fd: int, offset: int, count: int) -> int:
    out = sock.fileno()
    timeout = sock.gettimeout()
    sent = since_wait = 0
    while sent < count:
        try:
            n = os.sendfile(out, fd, offset + sent, count - sent)
        except BlockingIOError:
            wait_write(out, timeout=timeout,
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


def _copy(sock, fd: int, offset: int, count: int) -> int:
    sent = 0
    while sent < count:
        block = os.pread(fd, min(BLOCK_SIZE, count - sent), offset + sent)
        if not block:
            break
        sock.sendall(block)
        sent += len(block)
    return sent
