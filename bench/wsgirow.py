"""The WSGI row: Rex's ``wsgi:`` route against ``gunicorn -k gevent -w 1``, same app, same run.

Both serve ``bench/wsgi_hello.py`` (13 bytes) with one worker; wrk runs the same
load on each, alternated round by round as the main rounds are. The row is judged
on Rex/gunicorn req/s and on Rex's own p99. gunicorn is a bench-only tool, never a
dependency of Rex: when it is not installed the row is skipped, saying how to get it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from . import report
from .procs import fetch
from .scenarios import WSGI_APP, WSGI_P99_TARGET, WSGI_SCENARIO
from .wsgi_hello import BODY

GUNICORN_HINT = "pip install gunicorn"
REFERENCE = "gunicorn"


def have_gunicorn() -> bool:
    """gunicorn importable by the interpreter the bench runs (its gevent worker needs gevent)."""
    return importlib.util.find_spec("gunicorn") is not None


def check(port: int) -> str | None:
    """Why the server on ``port`` does not answer the hello app's bytes; None when it does."""
    try:
        status, _, body = fetch(port, WSGI_SCENARIO.path, timeout=30)
    except OSError as exc:
        return f"GET / failed: {exc}"
    if status != 200 or body != BODY:
        return f"GET / answered {status} with {body[:40]!r}, not the app's {BODY!r}"
    return None


def skipped_rows(why: str) -> list[report.Row]:
    """The row, shown as skipped (not failed): gunicorn is optional."""
    return [report.Row(WSGI_SCENARIO.label, "req/s", None, None, None,
                       str(WSGI_SCENARIO.target), "skipped", note=why)]


def rows(figures: dict[str, list], contender: str) -> list[report.Row]:
    """req/s (Rex over gunicorn) and p99 (Rex's own, gunicorn's for scale) from the runs."""
    ref_runs, con_runs = figures.get(REFERENCE, []), figures.get(contender, [])
    ref = report.median([r.req_per_s for r in ref_runs])
    con = report.median([r.req_per_s for r in con_runs])
    errors = sum(r.error_count for r in con_runs)
    ratio = report.ratio(con, ref)
    note = (f"the nginx column is gunicorn -k gevent -w 1 ({WSGI_APP}); "
            f"rex/nginx is Rex/gunicorn")
    if errors:
        note += f"; rex: {errors} failed requests"
    throughput = report.Row(WSGI_SCENARIO.label, "req/s", ref, con, ratio,
                            str(WSGI_SCENARIO.target),
                            report.verdict(WSGI_SCENARIO.target, ratio, errors), note=note)
    p99 = report.absolute_row(f"{WSGI_SCENARIO.label} p99", "ms",
                              report.median([r.p99_ms for r in ref_runs]),
                              report.median([r.p99_ms for r in con_runs]), WSGI_P99_TARGET,
                              errors=errors)
    return [throughput, p99]


def alternate(systems: list, rounds: int, run: Callable) -> dict[str, list]:
    """``run(system)`` for each system each round, the order flipped every other round."""
    figures: dict[str, list] = {system.name: [] for system in systems}
    for number in range(rounds):
        for system in systems if number % 2 == 0 else systems[::-1]:
            result = run(system)
            if result is not None:
                figures[system.name].append(result)
    return figures
