"""The master's pure parts without a master: backoff, config watching, scoreboard, registry."""

from __future__ import annotations

import json
import os
import random
import signal
import time

from rex_workers.master import registry
from rex_workers.master.supervise import (
    DEBOUNCE,
    EARLY_DEATH,
    MAX_BACKOFF,
    Backoff,
    ConfigWatch,
    backoff_delay,
    describe_exit,
)
from rex_workers.shared.scoreboard import DRAINING, FAILED, READY, REASON_MAX, Scoreboard


def test_backoff_replaces_at_once_then_doubles_with_jitter_up_to_a_cap():
    rng = random.Random(4)
    assert backoff_delay(0) == backoff_delay(1) == 0.0
    for deaths, base in ((2, 0.1), (3, 0.2), (4, 0.4), (5, 0.8), (12, MAX_BACKOFF)):
        delays = [backoff_delay(deaths, rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > base * 0.2  # jittered, not in lockstep


def test_backoff_counts_only_consecutive_early_deaths_per_slot():
    backoff = Backoff()
    now = 100.0
    assert backoff.died((1, 1), age=0.5, now=now) == 0.0  # the first crash: at once
    delay = backoff.died((1, 1), age=0.5, now=now)
    assert 0.08 <= delay <= 0.12
    assert not backoff.due((1, 1), now) and backoff.due((1, 1), now + delay)
    assert backoff.due((1, 2), now)  # other slots are not held back
    assert backoff.died((1, 1), age=EARLY_DEATH + 1, now=now) == 0.0  # it had been running
    backoff.forget(1)
    assert backoff.due((1, 1), 0.0)


def test_describe_exit():
    assert describe_exit(3 << 8) == "exit code 3"
    assert describe_exit(signal.SIGKILL) == "killed by SIGKILL"


def test_config_watch_waits_for_a_stable_file_and_ignores_same_bytes(tmp_path):
    path = tmp_path / "rex.config.yaml"
    path.write_text("workers: 1\n")
    digest = _digest(path)
    watch = ConfigWatch(str(path))
    assert watch.changed(str(path), digest) is False  # nothing happened
    path.write_text("workers: 2\n")
    _age(path, DEBOUNCE + 1)
    assert watch.changed(str(path), digest) is False  # first look: maybe still being written
    assert watch.changed(str(path), digest) is True  # unchanged since: reload
    assert watch.changed(str(path), digest) is False  # and only once
    path.write_text("workers: 2\n")  # saved again, same bytes
    _age(path, DEBOUNCE + 1)
    watch.changed(str(path), _digest(path))
    assert watch.changed(str(path), _digest(path)) is False
    path.write_text("workers: 3\n")  # a fresh write is too young, however often we look
    assert watch.changed(str(path), digest) is False
    assert watch.changed(str(path), digest) is False
    path.unlink()
    assert watch.changed(str(path), digest) is None
    assert watch.changed(str(path), digest) is False  # reported once


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_scoreboard_slots_are_shared_across_fork():
    board = Scoreboard(slots=4)
    board.reset(2, generation=7)
    assert board.read(2).state_name == "booting" and board.read(2).generation == 7
    pid = os.fork()
    if pid == 0:  # the worker's side: writes only its own slot
        slot = board.writer(2)
        slot.boot(os.getpid())
        slot.beat(41, 3, READY)
        slot.beat(42, 2, DRAINING)
        os._exit(0)
    os.waitpid(pid, 0)
    info = board.read(2)
    assert (info.pid, info.requests, info.connections, info.state) == (pid, 42, 2, DRAINING)
    assert time.monotonic() - info.heartbeat < 5
    assert board.read(1).pid == 0


def test_scoreboard_failure_reason_is_kept_and_capped():
    board = Scoreboard(slots=2)
    board.reset(0, generation=1)
    board.writer(0).fail("worker 1 could not start: " + "x" * 1000)
    info = board.read(0)
    assert info.state == FAILED and info.reason.startswith("worker 1 could not start: xxx")
    assert len(info.reason.encode()) == REASON_MAX


def test_registry_lists_live_masters_and_drops_stale_pid_files(tmp_path):
    run = str(tmp_path)
    registry.write_info(run, {"pid": os.getpid(), "config": "/a.yaml"})
    registry.write_status(run, os.getpid(), {"pid": os.getpid(), "config": "/a.yaml",
                                             "started": time.time() - 61, "workers": []})
    dead = _dead_pid()
    registry.write_info(run, {"pid": dead, "config": "/b.yaml"})
    # A live pid whose recorded start time differs is a reused pid, not our master.
    reused = {"pid": 1, "config": "/c", "start": "999999999999"}
    (tmp_path / "1.json").write_text(json.dumps(reused))
    found = registry.masters(run)
    assert [m["config"] for m in found] == ["/a.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}.json",
                                                          f"{os.getpid()}.status"]
    statuses = registry.statuses(run)
    assert statuses[0]["uptime"] >= 61
    assert registry.format_status(statuses).startswith(f"master {os.getpid()}  ?  up 1m0")
    registry.remove(run, os.getpid())
    assert registry.masters(run) == [] and registry.format_status([]) == "no running rex master"


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_process_start_is_stable():
    pid = os.getpid()
    assert registry.process_start(pid) == registry.process_start(pid) != ""
    assert registry.process_start(_dead_pid()) == ""
