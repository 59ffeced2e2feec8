"""Deadlines for the waits every request makes, without a timer per wait.

Socket code (gevent). A gevent socket with a timeout starts a ``Timeout`` (an
object plus a libev timer, started and stopped) for every wait: a few
microseconds, twice per proxied request (the client's keep-alive wait and the
upstream's answer). Here a waiting greenlet only writes its deadline into a
dict; one sweeper greenlet per process looks at the dict ``TICK`` times a
second and throws ``TimeoutError`` into the greenlets whose deadline passed,
the same exception a socket timeout raises. A deadline fires up to ``TICK``
late, which timeouts measured in seconds do not notice.

``call`` wraps one blocking call on a socket whose own timeout is None (or
``arm`` right before it and ``disarm`` in a ``finally`` right after). Nothing
may block in between but the call itself: the throw lands wherever the
greenlet waits.
"""

from __future__ import annotations

import time

import gevent
from greenlet import getcurrent

TICK = 0.1  # seconds between sweeps: how late a deadline may fire

_due: dict = {}  # greenlet -> monotonic deadline
_sweeper: gevent.Greenlet | None = None


def arm(seconds: float) -> None:
    """Give the current greenlet's next wait ``seconds`` before TimeoutError."""
    global _sweeper
    _due[getcurrent()] = time.monotonic() + seconds
    if _sweeper is None:
        _sweeper = gevent.spawn(_sweep)


def disarm() -> None:
    _due.pop(getcurrent(), None)


def call(seconds: float | None, fn, arg):
    """``fn(arg)`` (a blocking socket read) within ``seconds``; None: no deadline here."""
    if seconds is None:
        return fn(arg)
    # ``arm`` and ``disarm`` written out: this runs twice per proxied request.
    me = getcurrent()
    _due[me] = time.monotonic() + seconds
    if _sweeper is None:
        arm(seconds)
    try:
        return fn(arg)
    finally:
        if me in _due:  # gone when the sweeper fired it
            del _due[me]  # noqa: RUF051 - pop would be a call, twice per request


def _sweep() -> None:
    loop = gevent.get_hub().loop
    while True:
        gevent.sleep(TICK)
        now = time.monotonic()
        for glet, due in [item for item in _due.items() if item[1] <= now]:
            # Thrown from the hub, as gevent's own Timeout does: the sweeper
            # itself must not switch into the greenlet, or nothing switches back.
            loop.run_callback(_expire, glet, due)


def _expire(glet, due: float) -> None:
    # The greenlet may have finished its wait (and armed another) since the
    # sweep: only the deadline that was seen expiring may fire.
    if _due.get(glet) == due:
        del _due[glet]
        glet.throw(TimeoutError("timed out"))
