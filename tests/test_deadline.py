"""rex_workers.http.deadline: a socket wait with a deadline ends in TimeoutError, and only it."""

from __future__ import annotations

import time

import gevent
import pytest
from gevent import socket

from rex_workers.http import deadline


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def wait_with_deadline(sock, seconds: float) -> bytes:
    return deadline.call(seconds, sock.recv, 10)


def test_a_silent_peer_times_out_about_on_time(pair):
    a, _ = pair
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_with_deadline(a, 0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + 3 * deadline.TICK


def test_an_answered_wait_is_not_interrupted_later(pair):
    a, b = pair
    gevent.spawn_later(0.05, b.sendall, b"x")
    assert wait_with_deadline(a, 0.2) == b"x"
    # The old deadline has passed by the time of this second, longer wait: it
    # must not fire into it. Data arrives well after 0.2 s but before 1 s.
    gevent.spawn_later(0.5, b.sendall, b"y")
    assert wait_with_deadline(a, 1.0) == b"y"


def test_each_greenlet_has_its_own_deadline(pair):
    a, _ = pair
    c, d = socket.socketpair()
    try:
        quick = gevent.spawn(wait_with_deadline, a, 0.2)
        slow = gevent.spawn(wait_with_deadline, c, 5.0)
        quick.join(2)
        assert isinstance(quick.exception, TimeoutError)
        assert not slow.dead  # still waiting: its deadline is far away
        d.sendall(b"z")
        assert slow.get(timeout=2) == b"z"
    finally:
        c.close()
        d.close()
