"""Sockets without policy: writing in as few system calls as the kernel allows, peeking, shutting.

Used for client, upstream and static traffic alike. Imports nothing from Rex,
so every layer may use it. ``READ_SIZE`` is the one size of a read from a
client or an upstream, ``BLOCK_SIZE`` of a large copy.
"""

from __future__ import annotations

import socket as _stdsocket

from gevent.socket import socket as PlainSocket  # gevent's, over a non-blocking OS socket

READ_SIZE = 65536
# The one size of a large copy: a raw relay's reads, file blocks where sendfile
# cannot be used, a body read back for a filter.
BLOCK_SIZE = 256 * 1024

# What ``peek`` finds on an idle socket.
QUIET, WAITING, CLOSED = 0, 1, 2
# A plain int: or-ing the socket module's flag enums costs a Python call per peek.
_PEEK = int(_stdsocket.MSG_PEEK | _stdsocket.MSG_DONTWAIT)


def send_now(sock, data, flags: int = 0) -> int:
    """Bytes of ``data`` the kernel takes at once, without waiting (0 when its buffer is full).

    On a plain gevent socket this is one system call on the OS socket under it,
    which gevent keeps non-blocking: no timeout to set, no Python wrapper. A TLS
    socket (which encrypts in user space) or any other kind goes through its own
    ``send``, which may wait.
    """
    if type(sock) is PlainSocket:
        try:
            return sock._sock.send(data, flags)
        except (BlockingIOError, InterruptedError):
            return 0
    return sock.send(data, flags)


def send_all(sock, data, flags: int = 0, wait: float | None = None) -> None:
    """``sendall`` in one system call when the kernel takes it all, as it nearly always does.

    gevent's ``sendall`` asks the socket for SO_SNDBUF on every call: one more
    system call per write on the hot path, for nothing when one send suffices.
    What is left waits as the socket's timeout says, or ``wait`` seconds when given
    (the socket keeps that timeout after).
    """
    if type(sock) is PlainSocket:  # ``send_now`` written out: one call less per write
        try:
            sent = sock._sock.send(data, flags)
        except (BlockingIOError, InterruptedError):
            sent = 0
    else:
        sent = sock.send(data, flags)
    if sent < len(data):
        if wait is not None:
            sock.settimeout(wait)
        sock.sendall(memoryview(data)[sent:], flags)


def peek(sock) -> int:
    """Whether an idle socket is ``QUIET``, has bytes ``WAITING``, or is ``CLOSED``.

    One non-blocking system call. CLOSED covers EOF and any error: either way
    nothing more will come that anyone asked for.
    """
    # The raw socket under gevent's wrapper: gevent's own recv would wait for
    # readability instead of reporting EAGAIN, which is the answer we want here.
    raw = sock._sock if type(sock) is PlainSocket else getattr(sock, "_sock", sock)
    try:
        data = raw.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return QUIET
    except OSError:
        return CLOSED
    return WAITING if data else CLOSED


def shutdown(sock) -> None:
    """Shut both directions; wakes a greenlet blocked on ``sock`` without closing it."""
    try:
        sock.shutdown(_stdsocket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing left to wake
