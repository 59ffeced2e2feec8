"""Faults around a running Rex: killed upstreams and workers, a full disk, lost config, busy ports.

Every test runs a real forked master (`rex start -f`, the ``rex`` fixture) with
real upstreams and breaks something from outside, by pid or by file: what the
client sees must be a clean answer or a clean close, never a hang, and the
master must keep serving what it served before. Waits are conditions with
deadlines (``wait_for``); a hang fails within seconds, well under Rex's own
timeouts, so it cannot pass as a slow success.

A case that shows a product bug stays here, marked ``xfail(strict=True)``
with the diagnosis in its reason, so that the fix flips it to a failure
("XPASS") and the mark must be removed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    LoadLoop,
    alive,
    connection_owner,
    free_port,
    port_open,
    read_until_close,
    site_config,
    wait_for,
)
from test_hostile_strict import Violation, take

# An upstream in its own process, so the test can SIGKILL it mid-response: it
# answers one request as its path says, prints what it did, and waits to die.
# /cut-length: a head promising 100,000 bytes and 1,000 of them.
# /cut-chunked: a chunked head and one 1,000-byte chunk, no last chunk.
# /silent: nothing at all.
DYING_UPSTREAM = r"""
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data:
            break
        head += data
    if not head:
        continue
    path = head.split(b" ")[1].decode()
    print("got", path, flush=True)
    if path == "/cut-length":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    elif path == "/cut-chunked":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"
                     + b"y" * 1000 + b"\r\n")
    print("sent", path, flush=True)
    conn.recv(1)  # blocks until the test kills this process
"""


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection with ``Connection: close``: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path.encode())
        data, closed = read_until_close(s, timeout)
    assert closed, f"GET {path}: no close within {timeout}s: {data[:200]!r}"
    msg, _ = take(data, request=False, eof=True)
    return msg.status, msg.body


def status_json(rex) -> dict:
    """`rex status --json` of the one master under ``rex.home``."""
    result = rex.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    (master,) = [m for m in json.loads(result.stdout)["masters"] if m["pid"] == rex.pid]
    return master


def ready_pool(rex, size: int, without: set[int] = frozenset()) -> list[int] | None:
    """Pids of ``size`` ready workers of the serving generation, none in ``without``."""
    try:
        status = rex.status()
    except (OSError, ValueError):
        return None  # being rewritten: look again
    pids = [w["pid"] for w in status["workers"] if w["state"] == "ready"]
    if len(status["workers"]) != size or len(pids) != size or set(pids) & without:
        return None
    return sorted(pids)


# -- (a) an upstream killed mid-response -------------------------------------------------


class DyingUpstream:
    """The subprocess above; ``line`` waits for the next thing it says (a thread reads them)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", DYING_UPSTREAM],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.line(10))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the upstream said nothing within {timeout}s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self._reader.join(5)
        self.proc.stdout.close()


@pytest.fixture
def dying(rex, upstream):
    """Rex with ``/cut-*`` and ``/silent`` on a killable upstream, ``/ok`` on a healthy one."""
    victim, healthy = DyingUpstream(), upstream()
    port = free_port()
    # A read timeout of 30 s: were Rex to wait for the dead upstream, the client's
    # 5 s deadline would report it as the hang it is.
    rex.write(site_config(port, {"/cut-length": victim.url, "/cut-chunked": victim.url,
                                 "/silent": victim.url, "/ok": healthy.url},
                          "timeouts: {read: 30}\nlogging: {access: off}\nworkers: 1\n"))
    rex.start(ports=(port,))
    yield port, victim, rex.workers()
    victim.kill()


@pytest.mark.parametrize("path", ["/cut-length", "/cut-chunked"])
def test_upstream_killed_mid_body_cuts_the_client_short_at_once(dying, path):
    port, victim, workers = dying
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        # Keep-alive on purpose: only Rex closing can end this read.
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        assert victim.line(5) == f"got {path}"
        assert victim.line(5) == f"sent {path}"
        head, closed = read_until_close(s, 5, until=b"\r\n\r\n", at_least=1000)
        assert not closed and head.startswith(b"HTTP/1.1 200 "), head[:200]
        killed = time.monotonic()
        victim.kill()
        rest, closed = read_until_close(s, 5)
        took = time.monotonic() - killed
    data = head + rest
    assert closed, f"Rex neither finished nor closed {took:.1f}s after the upstream died"
    assert took < 2.0
    # The strict reader must see a body cut short: never a last chunk or a full
    # Content-Length that would make a truncated body look complete.
    with pytest.raises(Violation, match=r"cut short|shorter"):
        take(data, request=False, eof=True)
    assert data.count(b"x") + data.count(b"y") >= 1000
    # The worker lived through it, and the dead upstream is now a quick 502.
    assert get(port, "/ok")[0] == 200
    started = time.monotonic()
    assert get(port, path)[0] == 502 and time.monotonic() - started < 2.0
    assert all(alive(pid) for pid in workers)


def test_upstream_killed_before_answering_is_a_prompt_502(dying):
    port, victim, workers = dying
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /silent HTTP/1.1\r\nHost: a\r\n\r\n")
        assert victim.line(5) == "got /silent"
        killed = time.monotonic()
        victim.kill()
        data, _ = read_until_close(s, 5, until=b"\r\n\r\n")
        msg, _ = take(data, request=False, eof=False)
        took = time.monotonic() - killed
        assert msg is not None, f"no answer within 5s of the upstream's death: {data!r}"
        assert msg.status == 502 and took < 2.0
        # A 502 is an answer like any other: the client connection still works.
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        rest, closed = read_until_close(s, 5)
    assert closed
    replies = [m.status for m in _all(data + rest)]
    assert replies == [502, 200]
    assert all(alive(pid) for pid in workers)


def _all(data: bytes) -> list:
    out, pos = [], 0
    while pos < len(data):
        msg, used = take(data[pos:], request=False, eof=True)
        out.append(msg)
        pos += used
    return out


# -- (b) a worker killed under load -------------------------------------------------------


def test_workers_killed_under_load_fail_only_their_own_requests(rex, upstream):
    """SIGKILL each of two workers in turn under a keep-alive load (pids from `rex status`).

    Only requests on a connection the victim held may fail (LoadLoop counts
    each, retried or not); every other thread goes on untouched, and the pool
    is back to two ready workers each time.
    """
    up = upstream()
    port = rex.serve({"/": up.url}, "logging: {access: off}\nworkers: 2\n")
    load = LoadLoop(port, threads=6).start()
    lost: list[tuple[int, int]] = []  # (victim's connections, requests lost) per kill
    owned_by_victims: set[int] = set()
    try:
        load.wait_for(200)
        originals = sorted(w["pid"] for w in status_json(rex)["workers"])
        assert len(originals) == 2 and all(alive(p) for p in originals)
        for victim in originals:
            workers = wait_for(lambda: ready_pool(rex, 2), what="two ready workers")
            owners = {i: connection_owner(port, p, workers)
                      for i, p in load.local_ports().items()}
            mine = {i for i, owner in owners.items() if owner == victim}
            owned_by_victims |= mine
            errors_before = sum(map(len, load.errors_by_thread.values()))
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda v=victim: ready_pool(rex, 2, {v}), timeout=5, interval=0.01,
                     what="the pool back to two workers")
            load.wait_for(200)
            lost.append((len(mine), sum(map(len, load.errors_by_thread.values()))
                         - errors_before))
    finally:
        load.stop()
    print(f"{load.ok} requests; per kill (victim's connections, lost): {lost}; "
          f"errors: {load.errors_by_thread}")
    for connections, errors in lost:
        assert errors <= connections, "more requests failed than the victim had connections"
    for i, errors in load.errors_by_thread.items():
        assert i in owned_by_victims, f"thread {i} never talked to a victim: {errors}"
    # A client that reconnected was served at once: the master's listening socket
    # outlived the worker, and a new connection never met the dead one.
    assert not [f for f in load.failures if "after a reconnect" in f or "new connection" in f]
    status = status_json(rex)
    assert status["restarts"] == 2 and status["state"] == "serving"
    assert not set(originals) & {w["pid"] for w in status["workers"]}
    for victim in originals:
        assert f"(pid {victim}, gen 1) died (killed by SIGKILL); respawning now" in rex.output()


# -- (c) the disk under the access log is full --------------------------------------------


@pytest.fixture
def full_disk(rex, upstream):
    if not os.access("/dev/full", os.W_OK):
        pytest.skip("no writable /dev/full on this system")
    up = upstream()
    port = rex.serve({"/": up.url}, "logging: {access: /dev/full}\nworkers: 1\n")
    return port, rex.workers()


def test_access_log_on_a_full_disk_costs_lines_not_requests(rex, full_disk):
    port, (worker,) = full_disk
    statuses = [get(port, f"/r{i}")[0] for i in range(60)]
    assert statuses == [200] * 60
    assert rex.workers() == [worker] and alive(worker)
    rex.signal(signal.SIGUSR1)  # reopening the full "file" must not kill the worker either
    wait_for(lambda: "log files reopened" in rex.output(), what="the reopen")
    assert get(port, "/after-reopen")[0] == 200
    assert rex.workers() == [worker]
    assert status_json(rex)["restarts"] == 0


def test_access_log_on_a_full_disk_is_reported(rex, full_disk):
    """Lost lines are said once in the error log (not once per request), naming file and cause."""
    port, _ = full_disk
    for i in range(5):
        assert get(port, f"/r{i}")[0] == 200
    pattern = r"\[error\].*access log /dev/full: No space left on device"
    wait_for(lambda: re.search(pattern, rex.output()), timeout=2,
             what="an error line about the failing access log")
    assert len(re.findall(pattern, rex.output())) == 1


# -- (d) the config file deleted while running ----------------------------------------------


def test_deleted_config_keeps_serving_and_a_new_file_is_picked_up(rex, upstream):
    first, second = upstream(), upstream()
    port = rex.serve({"/": first.url}, "logging: {access: off}\nworkers: 1\n")
    assert get(port, "/one")[0] == 200 and len(first.requests) == 1
    rex.config.unlink()
    wait_for(lambda: f"config file {rex.config} is gone; still serving generation 1"
             in rex.output(), what="the master to notice the file is gone")
    # Several config polls later: same generation, same answers.
    for i in range(20):
        assert get(port, f"/still{i}")[0] == 200
    assert len(first.requests) == 21
    # A reload asked for while there is no file fails, and changes nothing.
    rex.signal(signal.SIGHUP)
    wait_for(lambda: rex.status()["reloads"]["failed"] == 1, what="the failed reload")
    assert rex.status()["generation"] == 1 and get(port, "/after-hup")[0] == 200
    # A good file written back is picked up by the watcher, with no signal.
    rex.write(site_config(port, {"/": second.url}, "logging: {access: off}\nworkers: 1\n"))
    wait_for(lambda: rex.status()["generation"] == 2 and ready_pool(rex, 1), timeout=10,
             what="the new file serving as generation 2")
    assert get(port, "/two")[0] == 200
    assert second.requests[-1]["path"] == "/two"
    assert status_json(rex)["reloads"]["ok"] == 1


# -- (e) a port already in use, at start and at reload -----------------------------------------


def busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def processes_naming(text: str) -> list[int]:
    """Pids whose command line holds ``text`` (to prove nothing was left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone while we looked
            if text.encode() in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemon"])
def test_port_in_use_at_start_fails_clearly_and_leaves_nothing(rex, foreground):
    free = free_port()
    with busy_port() as busy:
        taken = busy.getsockname()[1]
        rex.write(f"server:\n  instances:\n    - {{port: {free}, host: 127.0.0.1}}\n"
                  f"    - {{port: {taken}, host: 127.0.0.1}}\n")
        result = rex.cli("start", *(["-f"] if foreground else []), "-c", str(rex.config),
                         timeout=20)
        assert result.returncode == 1
        assert result.stderr.strip() == f"rex: port {taken} is already in use (instance 1)"
        assert result.stdout == ""
        # Nothing half-started: no process on this config, no listener on the free
        # port, no pid or status file.
        wait_for(lambda: processes_naming(str(rex.config)) == [], timeout=5,
                 what="no rex process left")
        assert not port_open(free)
        assert list((rex.home / "run").glob("*")) == []


def test_port_in_use_at_reload_keeps_the_old_config(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "logging: {access: off}\nworkers: 1\n")
    (worker,) = rex.workers()
    busy = busy_port()
    try:
        taken = busy.getsockname()[1]
        second = (f"    - port: {taken}\n      host: 127.0.0.1\n      routes:\n"
                  f"        - {{path: /, destination: \"{up.url}\"}}\n")
        rex.write(site_config(port, {"/": up.url}) + second
                  + "logging: {access: off}\nworkers: 1\n")
        rex.signal(signal.SIGHUP)  # the watcher may see the edit first: both fail alike
        wait_for(lambda: rex.status()["reloads"]["failed"] >= 1, what="the failed reload")
        error = f"port {taken} is already in use (instance 1)"
        assert rex.status()["reloads"]["last_error"] == error
        assert re.search(r"reload \(.*\) failed; still serving generation 1:\n"
                         + re.escape(error), rex.output())
        assert get(port, "/old")[0] == 200
        status = status_json(rex)
        assert (status["generation"], status["state"], status["ready"]) == (1, "serving", True)
        assert [w["pid"] for w in status["workers"]] == [worker]
    finally:
        busy.close()
    # Once the port is free, the same file reloads.
    rex.signal(signal.SIGHUP)
    wait_for(lambda: rex.status()["generation"] == 2 and ready_pool(rex, 1), timeout=10,
             what="generation 2 once the port is free")
    assert get(taken, "/new")[0] == 200 and get(port, "/old-port")[0] == 200
