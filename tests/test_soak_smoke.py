"""bench/soak.py works: a short soak (2,000 requests) runs end to end and reports its figures.

The soak itself is a measurement, not a test (docs/reliability.md); this only
proves the harness starts both masters, drives every kind of traffic through
the worker (keep-alive GETs, WebSocket echo sessions, 502s from a dead
upstream), samples /proc and cleans up after itself. The Python client is
used so the test does not depend on wrk being installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import alive

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_soak_reports_steady_figures(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--requests", "2000", "--samples", "2",
         "--client", "python", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert (figures["requests"], figures["websockets"], figures["failures"]) == (2000, 20, 100)
    points = [s["point"] for s in figures["samples"]]
    assert points == ["start", "warm-up", "slice 1", "slice 2"]
    assert figures["samples"][-1]["requests"] == 2000
    assert all(s["rss_mb"] > 0 and s["fds"] > 0 for s in figures["samples"])
    assert figures["fds_growth"] <= 2  # soak.FD_TOLERANCE: pooled connections come and go
    assert "Rex soak: 2,000 requests (python)" in result.stdout
    assert "after the warm-up: RSS" in result.stdout
    # Both masters and their workers were stopped by the soak itself.
    assert not alive(figures["worker_pid"])
