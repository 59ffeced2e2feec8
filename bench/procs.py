"""Starting, probing and stopping the servers under test, and reading their memory.

The only module that spawns long-lived processes. Each server is a child
of the bench in its own session (a Ctrl-C at the terminal reaches only the
bench, whose ``finally`` stops them), its output goes to a log file in the
bench's temp dir, and it is stopped by pid: the master first, then any
child still alive. Nothing here is found or killed by name.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL = 0.05


class StartError(Exception):
    """A server exited or never answered; the message says which and why."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now.

    nginx cannot listen on port 0 and report the port, so the kernel picks
    them here; all sockets stay open until every port is chosen.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux: /proc/<pid>/task/*/children)."""
    paths = glob.glob(f"/proc/{pid}/task/*/children")
    if not paths and os.path.isdir(f"/proc/{pid}"):
        return _children_by_scan(pid)  # a kernel built without CONFIG_PROC_CHILDREN
    found: list[int] = []
    for path in paths:
        with contextlib.suppress(OSError), open(path) as f:
            found.extend(int(p) for p in f.read().split())
    return found


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for path in glob.glob("/proc/[0-9]*/stat"):
        # Processes come and go while we read: a vanished one is simply not a child.
        with contextlib.suppress(OSError, IndexError, ValueError), open(path) as f:
            # Field 4 is the parent pid; the command name before it may hold spaces.
            if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(path.split("/")[2]))
    return found


def vm_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (10**6 bytes), from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise OSError(f"no VmRSS for pid {pid}")


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return ""


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body)."""
    status, _, body = fetch(port, path, timeout)
    return status, body


def fetch(port: int, path: str, timeout: float = 5.0,
          fields: Sequence[str] = ()) -> tuple[int, str | None, bytes]:
    """One GET with extra request ``fields``: (status, Content-Encoding, body as sent)."""
    headers = {"Host": "bench"}
    headers.update(f.split(": ", 1) for f in fields)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Encoding"), response.read()
    finally:
        conn.close()


class Server:
    """One server process: started in the foreground, stopped by pid."""

    def __init__(self, name: str, argv: Sequence[str], log_path: str, *,
                 stop_signal: int = signal.SIGTERM, cwd: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, ports: Sequence[int]) -> None:
        """Spawn, then wait until every port in ``ports`` answers HTTP."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, env=self.env, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        for port in ports:
            self._wait_answering(port, deadline)

    def _wait_answering(self, port: int, deadline: float) -> None:
        while True:
            code = self.proc.poll()
            if code is not None:
                raise StartError(f"{self.name} exited with code {code} before serving "
                                 f"port {port}:\n{self.log_tail()}")
            try:
                http_get(port, "/", timeout=1.0)
                return
            # Not listening yet, or accepted and not answering yet: keep polling.
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} did not answer on port {port} within "
                                 f"{READY_TIMEOUT:g}s:\n{self.log_tail()}")
            time.sleep(POLL)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            text = f.read()[-8192:].decode("utf-8", "replace")
            return "\n".join("    " + line for line in text.splitlines()[-lines:])
        return "    (no output)"

    def stop(self) -> None:
        """Signal the master, wait, then SIGKILL whatever of its tree is left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        # A master killed hard would orphan its workers: note them first.
        workers = [(pid, cmdline(pid)) for pid in children(self.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, self.stop_signal)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()
        for pid, title in workers:
            if _same_process(pid, title):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _same_process(pid: int, title: str) -> bool:
    """Whether ``pid`` still runs the command line we saw, not a zombie or a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and cmdline(pid) == title
