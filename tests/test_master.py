"""The master with real forked workers: crashes, hangs, boot failures, signals, recycling, stop.

Every test runs a real `rex start -f` master (the ``rex`` fixture) or a daemonized
one (``daemons``) and watches it from outside: /proc, its status file, its log.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import threading
import time
import urllib.request
from pathlib import Path

from conftest import (
    LoadLoop,
    Recorder,
    alive,
    children,
    connection_owner,
    free_port,
    port_open,
    site_config,
    socket_inodes,
    tcp_table,
    wait_for,
)


def pool(rex, size: int, *, without: tuple[int, ...] = ()) -> list[int] | None:
    """The pids of ``size`` ready workers of one generation (none of ``without``), else None."""
    try:
        workers = rex.status()["workers"]
    except (OSError, ValueError):
        return None  # not written yet, or being replaced
    ready = [w for w in workers if w["state"] == "ready"]
    if len(workers) != size or len(ready) != size or {w["pid"] for w in ready} & set(without):
        return None
    return sorted(w["pid"] for w in ready)


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def test_killed_worker_fails_only_its_own_requests_and_is_replaced_at_once(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 2\n")
    load = LoadLoop(port, threads=4).start()
    try:
        load.wait_for(100)
        workers = wait_for(lambda: pool(rex, 2), what="two ready workers")
        owners = {i: connection_owner(port, p, workers) for i, p in load.local_ports().items()}
        assert None not in owners.values(), owners
        victim = max(workers, key=lambda w: list(owners.values()).count(w))
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pool(rex, 2, without=(victim,)), timeout=5, interval=0.01,
                 what="the pool back to two workers")
        replaced_in = time.monotonic() - killed_at
        load.wait_for(100)
    finally:
        load.stop()
    print(f"replaced in {replaced_in:.3f}s; {load.ok} requests, errors: {load.errors_by_thread}")
    assert replaced_in < 1.0
    for i, errors in load.errors_by_thread.items():
        # Only a connection the dead worker held may have lost a request, and one at most.
        assert owners[i] == victim, (i, errors)
        assert len(errors) == 1, errors
    assert len(load.errors_by_thread) <= list(owners.values()).count(victim)
    assert f"(pid {victim}, gen 1) died (killed by SIGKILL); respawning now" in rex.output()


def test_blocked_hub_is_detected_by_heartbeat_and_replaced(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 2\ntimeout: 1\n")
    victim = wait_for(lambda: pool(rex, 2), what="two ready workers")[0]
    stopped_at = time.monotonic()
    os.kill(victim, signal.SIGSTOP)  # its hub can no longer run: no more heartbeats
    try:
        wait_for(lambda: pool(rex, 2, without=(victim,)), timeout=10, interval=0.01,
                 what="the frozen worker replaced")
        took = time.monotonic() - stopped_at
        assert not alive(victim)
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)
    print(f"frozen worker killed and replaced after {took:.2f}s (timeout 1s)")
    assert 1.0 <= took < 4.0
    assert re.search(rf"worker \d \(pid {victim}, gen 1\) sent no heartbeat for [\d.]+s "
                     r"\(timeout 1s\): killing it", rex.output())
    assert get(f"http://127.0.0.1:{port}/x")[0] == 200


BROKEN_APP = "raise RuntimeError('DATABASE_URL is not set')\n"

FLAKY_APP = """\
import os

if os.path.exists(os.path.join(os.path.dirname(__file__), "broken")):
    raise RuntimeError("broken on purpose")


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"flaky app ok"]
"""


def test_worker_that_cannot_boot_fails_start_with_the_reason(rex, daemons):
    (rex.workdir / "broken_app.py").write_text(BROKEN_APP)
    rex.write(site_config(free_port(), {"/": "wsgi:broken_app:app"}, "workers: 2\n"))
    for args in (("-f",), ()):  # foreground and daemonized
        started = time.monotonic()
        result = rex.cli("start", *args, "-c", str(rex.config))
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        reason = re.fullmatch(r"rex: (worker [12] could not start: .*)", last)
        assert reason and last.endswith("RuntimeError: DATABASE_URL is not set"), last
        assert time.monotonic() - started < 10
        # The master's log says what happened: the failure, that it stops, and nothing of
        # respawning (its other worker is stopped, not replaced).
        log = result.stderr if args else (rex.home / "rex.log").read_text()
        said = [line.split("]: ", 1)[1] for line in log.splitlines() if " rex[" in line]
        assert said[0] == f"{reason[1]}; rex is stopping: the first generation cannot start"
        assert said[-1] == "rex stopped: it could not start serving", said
        assert all(re.fullmatch(r"worker [12] \(pid \d+, gen 1\) exited \(.*\)", line)
                   for line in said[1:-1]), said
    assert not daemons.running()


def test_worker_that_keeps_failing_backs_off_instead_of_fork_bombing(rex):
    (rex.workdir / "flaky_app.py").write_text(FLAKY_APP)
    port = rex.serve({"/": "wsgi:flaky_app:app"}, "workers: 1\n")
    assert get(f"http://127.0.0.1:{port}/") == (200, b"flaky app ok")
    (rex.workdir / "broken").touch()
    os.kill(rex.workers()[0], signal.SIGKILL)
    window = 4.0
    deadline = time.monotonic() + window
    wait_for(lambda: time.monotonic() > deadline, window + 1, interval=0.1, what="the window")
    failures = re.findall(r"worker 1 could not start: .*broken on purpose; respawning in "
                          r"([\d.]+)s", rex.output())
    print(f"{len(failures)} failed boots in {window}s, delays {failures}")
    # Without backoff a worker failing in ~0.3 s would be forked a dozen times or more.
    assert 3 <= len(failures) <= 8
    delays = [float(d) for d in failures]
    assert delays == sorted(delays) and delays[-1] >= 0.6  # doubling, jitter aside
    (rex.workdir / "broken").unlink()
    wait_for(lambda: pool(rex, 1), timeout=15, what="the worker back once it can boot")
    assert get(f"http://127.0.0.1:{port}/") == (200, b"flaky app ok")


def test_ttin_adds_and_ttou_retires_a_worker(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 1\n")
    first = wait_for(lambda: pool(rex, 1), what="one worker")
    rex.signal(signal.SIGTTIN)  # one at a time: pending signals of one kind merge into one
    wait_for(lambda: pool(rex, 2), what="two workers")
    rex.signal(signal.SIGTTIN)
    three = wait_for(lambda: pool(rex, 3), what="three workers")
    assert set(first) < set(three)
    assert rex.status()["workers_wanted"] == 3
    newest = max(rex.status()["workers"], key=lambda w: w["worker"])
    rex.signal(signal.SIGTTOU)
    two = wait_for(lambda: pool(rex, 2), what="two workers")
    assert newest["pid"] not in two and set(two) < set(three)
    assert get(f"http://127.0.0.1:{port}/")[0] == 200


def test_usr1_reopens_log_files(rex, upstream):
    up = upstream()
    port = free_port()
    access = rex.workdir / "access.log"
    rex.write(site_config(port, {"/": up.url}, f"workers: 2\nlogging:\n  access: {access}\n"))
    rex.start(ports=(port,))
    get(f"http://127.0.0.1:{port}/before")
    wait_for(lambda: access.exists() and b"/before" in access.read_bytes(), what="a log line")
    rotated = access.rename(rex.workdir / "access.log.1")
    rex.signal(signal.SIGUSR1)
    wait_for(lambda: "log files reopened (SIGUSR1)" in rex.output(), what="the reopen")
    wait_for(lambda: access.exists(), what="every worker reopening its log")
    for _ in range(4):  # whichever worker answers must write to the new file
        get(f"http://127.0.0.1:{port}/after")
    wait_for(lambda: access.read_bytes().count(b"/after") == 4, what="lines in the new file")
    assert b"/after" not in rotated.read_bytes()


def test_max_requests_recycles_workers_without_failing_a_request(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 2\ntimeout: 1\nmax_requests: 40\n"
                                 "max_requests_jitter: 10\n")
    load = LoadLoop(port, threads=3).start()
    try:
        wait_for(lambda: rex.output().count("draining (recycling after") >= 3, timeout=20,
                 what="three recycled workers")
        load.wait_for(20)
    finally:
        load.stop()
    print(f"{load.ok} requests, reconnects {load.reconnects}")
    assert load.failures == []
    status = wait_for(lambda: pool(rex, 2) and rex.status(), what="a full pool")
    assert status["restarts"] == 0  # recycling is not a crash


class Slow(Recorder):
    """Answers after ``?s=`` seconds; ``server.arrived`` is set once a request is in."""

    def _handle(self) -> None:
        self.server.arrived.set()
        delay = float(self.path.partition("s=")[2] or 0)
        time.sleep(delay)
        super()._handle()

    do_GET = _handle


def slow_upstream(upstream):
    up = upstream(Slow)
    up.server.arrived = threading.Event()
    return up


def fetch_in_thread(url: str) -> dict:
    result: dict = {}

    def run() -> None:
        try:
            result["reply"] = get(url)
        except Exception as exc:  # the test reports it
            result["error"] = exc
        result["at"] = time.monotonic()

    result["thread"] = threading.Thread(target=run, daemon=True)
    result["thread"].start()
    return result


def test_stop_drains_an_in_flight_request_and_refuses_new_ones(rex, upstream):
    up = slow_upstream(upstream)
    port = rex.serve({"/": up.url}, "workers: 2\n")
    slow = fetch_in_thread(f"http://127.0.0.1:{port}/slow?s=1.5")
    assert up.server.arrived.wait(10)
    os.kill(rex.pid, signal.SIGTERM)
    wait_for(lambda: not port_open(port), what="listeners closed")
    assert "reply" not in slow  # still in flight while nothing new is accepted
    assert rex.proc.wait(15) == 0
    slow["thread"].join(5)
    assert slow.get("reply", slow.get("error"))[0] == 200
    assert "graceful stop" in rex.output()


def test_graceful_timeout_bounds_how_long_a_stop_waits(rex, upstream):
    up = slow_upstream(upstream)
    port = rex.serve({"/": up.url}, "workers: 1\ngraceful_timeout: 0.5\n")
    slow = fetch_in_thread(f"http://127.0.0.1:{port}/slow?s=5")
    assert up.server.arrived.wait(10)
    asked = time.monotonic()
    os.kill(rex.pid, signal.SIGTERM)
    assert rex.proc.wait(10) == 0
    took = time.monotonic() - asked
    slow["thread"].join(5)
    assert 0.5 <= took < 2.5 and "error" in slow  # cut at the deadline, not after 5 s


def test_orphaned_workers_exit_when_the_master_is_killed(rex, upstream):
    up = upstream()
    rex.serve({"/": up.url}, "workers: 2\ntimeout: 1\n")
    workers = wait_for(lambda: pool(rex, 2), what="two workers")
    os.kill(rex.pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(w) for w in workers), timeout=5, what="workers exiting")


def test_master_process_facts(rex, upstream):
    """Titles, no gevent in the master, RLIMIT_NOFILE raised, workers never bind."""
    up = upstream()
    port = free_port()
    rex.write(site_config(port, {"/": up.url}, "workers: 2\n"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    try:
        rex.start(ports=(port,))  # inherits the lowered soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    workers = wait_for(lambda: pool(rex, 2), what="two workers")
    cmdline = Path(f"/proc/{rex.pid}/cmdline").read_text()
    assert cmdline.startswith(f"rex: master [{rex.config}]")
    titles = sorted(Path(f"/proc/{w}/cmdline").read_text().strip("\0") for w in workers)
    assert titles == ["rex: worker 1 [gen 1]", "rex: worker 2 [gen 1]"]
    assert "gevent" not in Path(f"/proc/{rex.pid}/maps").read_text()
    limits = Path(f"/proc/{rex.pid}/limits").read_text()
    nofile = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()
    assert nofile[0] == nofile[1], limits
    listening = [inode for local, _r, state, inode in tcp_table() if local == port
                 and state == "0A"]
    assert len(listening) == 1  # one socket, bound once by the master, shared by the workers
    for pid in (rex.pid, *workers):
        assert listening[0] in socket_inodes(pid)


def test_reuse_port_gives_each_worker_its_own_socket_kept_across_restarts(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 2\nreuse_port: true\n")
    workers = wait_for(lambda: pool(rex, 2), what="two workers")
    listening = {inode for local, _r, state, inode in tcp_table() if local == port
                 and state == "0A"}
    assert len(listening) == 2
    assert listening <= socket_inodes(rex.pid)
    own = {w: socket_inodes(w) & listening for w in workers}
    assert all(len(s) == 1 for s in own.values()) and len(set.union(*own.values())) == 2
    os.kill(workers[0], signal.SIGKILL)
    after = wait_for(lambda: pool(rex, 2, without=(workers[0],)), what="a replacement")
    replacement = next(w for w in after if w not in workers)
    assert socket_inodes(replacement) & listening == own[workers[0]]
    for _ in range(6):
        assert get(f"http://127.0.0.1:{port}/")[0] == 200


def test_master_children_are_only_its_workers(rex, upstream):
    """Nothing but workers is forked: no helper processes to leak."""
    up = upstream()
    rex.serve({"/": up.url}, "workers: 3\n")
    workers = wait_for(lambda: pool(rex, 3), what="three workers")
    assert sorted(children(rex.pid)) == workers
