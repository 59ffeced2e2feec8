"""A 1 GiB file served by a separate process whose memory must stay flat.

The server is tests/test_static_harness.py run as a script (StaticSite on a
gevent StreamServer); its resident set is read from /proc before and after
the whole gigabyte went through, and its high-water mark must not move by
more than a few MiB: the bytes go file → socket in the kernel, never through
Python buffers. The file is sparse, so the test costs no disk.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
GIB = 1024**3
TAIL = b"THE-END"
ALLOWED_GROWTH = 8 * 1024 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


class Response:
    """A response head, and its connection positioned at the body."""

    def __init__(self, port: int, target: str, headers: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                          f"{headers}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                self.sock.close()
                raise AssertionError("closed before the head")
            data += chunk
        self.head, self.rest = data.split(b"\r\n\r\n", 1)

    def drain(self) -> tuple[int, bytes]:
        """Read to the end without keeping it: (bytes read, the last 64 of them)."""
        total, tail = len(self.rest), self.rest[-64:]
        buf = memoryview(bytearray(1 << 20))
        try:
            while True:
                n = self.sock.recv_into(buf)
                if not n:
                    break
                total += n
                tail = (tail + bytes(buf[max(0, n - 64):n]))[-64:]
        finally:
            self.sock.close()
        return total, tail


@pytest.fixture
def big_server(tmp_path):
    root = tmp_path / "public"
    root.mkdir()
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(GIB)
        f.seek(GIB - len(TAIL))
        f.write(TAIL)
    (root / "small.txt").write_bytes(b"small")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, str(TESTS / "test_static_harness.py"), str(root)],
                            stdout=subprocess.PIPE, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"server did not start (exit {proc.poll()})"
        yield proc.pid, int(line)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        proc.stdout.close()


@pytest.mark.slow
def test_gigabyte_file_with_flat_memory(big_server):
    pid, port = big_server
    # Warm up every code path first, so imports and caches are not counted.
    Response(port, "/small.txt").drain()
    assert Response(port, "/sparse.bin", "Range: bytes=0-99\r\n").drain()[0] == 100
    before = memory_kib(pid)

    r = Response(port, "/sparse.bin")
    assert r.head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d\r\n" % GIB in r.head
    total, tail = r.drain()
    assert total == GIB and tail.endswith(TAIL)

    after = memory_kib(pid)
    assert after["VmHWM"] - before["VmHWM"] < ALLOWED_GROWTH, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < ALLOWED_GROWTH, (before, after)


def test_range_at_the_end_of_a_gigabyte(big_server):
    _, port = big_server
    r = Response(port, "/sparse.bin", "Range: bytes=-7\r\n")
    assert r.head.startswith(b"HTTP/1.1 206 ")
    assert b"Content-Range: bytes %d-%d/%d\r\n" % (GIB - 7, GIB - 1, GIB) in r.head + b"\r\n"
    assert r.drain() == (7, TAIL)
    total, tail = Response(port, "/sparse.bin", f"Range: bytes={GIB - 1000}-\r\n").drain()
    assert total == 1000 and tail.endswith(TAIL)
    r = Response(port, "/sparse.bin", f"Range: bytes={GIB}-\r\n")
    assert r.head.startswith(b"HTTP/1.1 416 ") and b"Content-Range: bytes */%d" % GIB in r.head
    r.drain()
