"""Process plumbing for the master: daemonizing, its log, systemd.

May: fork the daemon, redirect stdio, write the master's log lines, talk to
systemd's notify socket. May not: know what a worker or a config is, import
gevent, or print to the user (``rex.py`` turns results into messages).

``rex start`` without ``-f`` forks twice (so the daemon is not a session
leader and can never regain a terminal) and waits on a pipe for one message:
``ok\\n<what is serving>`` or ``error\\n<why not>``, NUL-terminated.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


class MasterLog:
    """The master's own lines, on stderr; ``path`` is where stderr points once daemonized."""

    def __init__(self, path: str = "") -> None:
        self.path = path

    def info(self, message: str) -> None:
        self._write("info", message)

    def error(self, message: str) -> None:
        self._write("error", message)

    def reopen(self) -> None:
        """SIGUSR1 after log rotation: point stdout/stderr at a fresh file by the same name."""
        if self.path:
            redirect_output(self.path)

    def _write(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            # One write(2) per line on an O_APPEND file: workers' lines never interleave.
            os.write(2, f"{stamp} [{level}] rex[{os.getpid()}]: {message}\n".encode())
        except OSError:
            pass  # a full disk must not stop the master; the line is lost


def redirect_output(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def daemonize(log_path: str) -> tuple[bool, int]:
    """(True, read end) in the caller; (False, write end) in the daemon, stdio on ``log_path``."""
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        return True, r
    os.close(r)
    os.setsid()  # no controlling terminal: closing the shell does not SIGHUP the master
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    redirect_output(log_path)
    return False, w


def tell(fd: int, ok: bool, text: str) -> None:
    """The daemon's one report to the waiting ``rex start``; closes ``fd``."""
    with contextlib.suppress(OSError):
        os.write(fd, f"{'ok' if ok else 'error'}\n{text}\0".encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def wait_report(fd: int) -> tuple[bool, str]:
    """Read the daemon's report; EOF without one means it died first ("" text)."""
    data = b""
    while b"\0" not in data and (chunk := os.read(fd, 65536)):
        data += chunk
    os.close(fd)
    verdict, _, text = data.split(b"\0")[0].decode("utf-8", "replace").partition("\n")
    return verdict == "ok", text


def notify_systemd(message: bytes) -> None:
    """sd_notify(3) over $NOTIFY_SOCKET: a datagram; '@' means the abstract namespace.

    ``RELOADING=1`` carries ``MONOTONIC_USEC`` (the clock systemd compares with
    the moment it asked for the reload): ``Type=notify-reload`` needs it to tell
    this reload's ``READY=1`` from an earlier one's; older systemd ignores it.
    """
    if message.startswith(b"RELOADING=1"):
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        message = b"%s\nMONOTONIC_USEC=%d" % (message, usec)
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message, addr)

