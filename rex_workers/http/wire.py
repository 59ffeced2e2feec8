"""Writing to a socket in as few system calls as the kernel allows.

Socket code without policy: used for client, upstream and static responses
alike. Imports nothing from Rex, so every layer may use it.
"""

from __future__ import annotations


def send_all(sock, data: bytes, flags: int = 0) -> None:
    """``sendall`` in one ``send`` when the kernel takes it all, as it nearly always does.

    gevent's ``sendall`` asks the socket for SO_SNDBUF on every call: one more
    system call per write on the hot path, for nothing when one send suffices.
    """
    sent = sock.send(data, flags)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:], flags)
