"""Health state of one upstream server, as pure state machines over timestamps.

May: count failures and successes and say whether an upstream should get
traffic. May not: touch sockets, read the clock (callers pass ``now``), import
gevent. Two independent opinions exist per upstream and both must agree:

- ``PassiveHealth``: nginx's ``max_fails``/``fail_timeout``, fed by the outcome
  of real requests (SPEC §6, on by default).
- ``ActiveCheckState``: HAProxy-style consecutive ``fails``/``passes``
  thresholds over the results of health-check probes (``health_check:``).
"""

from __future__ import annotations

from collections import deque


class PassiveHealth:
    """``max_fails`` failures within ``fail_timeout`` take the upstream out.

    Once out it waits ``fail_timeout``; then exactly one request is let through
    as a trial (nginx does the same: the peer's "checked" time moves to the
    moment it is chosen). A trial that succeeds brings the upstream fully back;
    one that fails sends it out for another ``fail_timeout``. So a dead upstream
    costs one request per ``fail_timeout``, not a burst, and a recovered one
    comes back on its own without any prober. ``max_fails == 0`` disables all of
    this (nginx: "zero value disables the accounting of attempts").
    """

    __slots__ = ("_failures", "checked", "down", "fail_timeout", "failed_at", "max_fails")

    def __init__(self, max_fails: int, fail_timeout: float) -> None:
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        # Only the newest max_fails failure times matter: the window is full when
        # the oldest of them is still within fail_timeout of the newest.
        self._failures: deque[float] = deque(maxlen=max(max_fails, 1))
        self.down = False
        self.checked = 0.0  # when it went down, or when its last trial started
        self.failed_at = 0.0  # the last failure while down

    @property
    def fails(self) -> int:
        """Failures counted towards ``max_fails`` right now (for status pages)."""
        return self.max_fails if self.down else len(self._failures)

    def available(self, now: float) -> bool:
        return not self.down or now - self.checked >= self.fail_timeout

    def down_for(self, now: float) -> float:
        """Seconds until the next trial request is allowed (0 when available)."""
        return 0.0 if self.available(now) else self.checked + self.fail_timeout - now

    def chosen(self, now: float) -> None:
        """A request was sent to this upstream: if it is down, that request is the trial."""
        if self.down and self.available(now):
            self.checked = now

    def failed(self, now: float) -> bool:
        """Record a failed attempt; True when this one took the upstream out of rotation."""
        if not self.max_fails:
            return False
        if self.down:
            # A failed trial, or a request started before the upstream went out
            # that failed late: either is fresh evidence, so the wait restarts.
            was_available = self.available(now)
            self.checked = self.failed_at = now
            return was_available
        failures = self._failures
        while failures and now - failures[0] > self.fail_timeout:
            failures.popleft()  # spread over more than fail_timeout: these no longer count
        failures.append(now)
        if len(failures) < self.max_fails:
            return False
        failures.clear()
        self.down = True
        self.checked = self.failed_at = now
        return True

    def succeeded(self, now: float) -> None:
        """Record a successful exchange."""
        # Only a request started after the last failure proves recovery (nginx:
        # "accessed < checked"); a late success of an old request does not.
        if self.down and self.checked > self.failed_at:
            self.reset()

    def reset(self) -> None:
        self.down = False
        self._failures.clear()


class ActiveCheckState:
    """Consecutive probe results → up/down, with hysteresis.

    ``fails`` failed probes in a row take an up upstream down; ``passes`` good
    probes in a row bring a down one back; any opposite result restarts the
    count. An upstream starts up (HAProxy and nginx do too), so a reload or a
    new worker does not answer 502 until the first probes have run.
    """

    __slots__ = ("fails", "passes", "streak", "up")

    def __init__(self, fails: int = 2, passes: int = 2, up: bool = True) -> None:
        self.fails = max(fails, 1)
        self.passes = max(passes, 1)
        self.up = up
        self.streak = 0  # consecutive results that disagree with ``up``

    def record(self, ok: bool) -> bool | None:
        """Add one probe result; returns the new state when it changed, else None."""
        if ok == self.up:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < (self.passes if ok else self.fails):
            return None
        self.up = ok
        self.streak = 0
        return ok
