"""The master's listening sockets: bound once, before any fork, kept across restarts and reloads.

Only the master binds (so privileged ports work and a restarting worker never
closes the socket its clients are queued on); workers inherit what
``for_worker`` gives them. May: bind, listen, close, raise RLIMIT_NOFILE.
May not: accept, import gevent, know about generations beyond their
addresses and worker count.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
from collections.abc import Iterable

BACKLOG = 2048  # like nginx's default on Linux; the kernel caps it at net.core.somaxconn

Address = tuple[str, int]
Key = tuple[Address, int]


class BindError(Exception):
    """A port we cannot listen on, said the way a person fixes it."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


def bind(address: Address, where: str, reuse_port: bool = False) -> socket.socket:
    host, port = address
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BindError(f"port {port} is already in use ({where})", port) from None
        if exc.errno == errno.EACCES:
            raise BindError(f"no permission to bind port {port} ({where}): use a port "
                            "above 1023 or start rex as root", port) from None
        raise BindError(f"cannot bind {host}:{port} ({where}): {exc.strerror}", port) from None
    return sock


class Listeners:
    """Every socket the master holds, keyed ``(address, wid)``.

    By default all workers share one socket per address (``wid`` 0 in the key).
    With ``reuse_port`` each worker slot has its own SO_REUSEPORT socket per
    address, so the kernel spreads connections over the workers; the master
    keeps it while the slot's worker restarts, so connections queued on it
    wait for the replacement instead of being reset.
    """

    def __init__(self, reuse_port: bool) -> None:
        self.reuse_port = reuse_port
        self.sockets: dict[Key, socket.socket] = {}

    def key(self, address: Address, wid: int) -> Key:
        return (address, wid if self.reuse_port else 0)

    def keys(self, addresses: Iterable[Address], wids: Iterable[int]) -> set[Key]:
        return {self.key(address, wid) for address in addresses for wid in wids}

    def bind(self, where: dict[Address, str], workers: int) -> None:
        """Bind what is missing for ``workers`` slots on these addresses; all or nothing.

        ``where`` names each address for error messages ("instance 0").
        """
        new: dict[Key, socket.socket] = {}
        try:
            for address, name in where.items():
                for key in self.keys([address], range(1, workers + 1)):
                    if key not in self.sockets and key not in new:
                        new[key] = bind(address, name, self.reuse_port)
        except BindError:
            for sock in new.values():
                sock.close()
            raise
        self.sockets.update(new)

    def for_worker(self, addresses: Iterable[Address], wid: int) -> dict[Address, socket.socket]:
        return {address: self.sockets[self.key(address, wid)] for address in addresses}

    def keep_only(self, used: set[Key]) -> None:
        for key in [k for k in self.sockets if k not in used]:
            self.sockets.pop(key).close()


def raise_nofile() -> None:
    """Every connection is a descriptor (two when proxied): take all the kernel allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
