"""Active health checks through a real 2-worker master: one prober, shared verdicts.

The upstream under test answers /health with 200 or 503 as the test says, and
for every probe looks up in /proc which Rex process holds the probing socket:
that is how "only one worker probes" is checked, not by counting.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import connection_owner, free_port, send_request, site_config, wait_for


class Flaky(BaseHTTPRequestHandler):
    """/health: 200 while ``server.healthy``, else 503. Anything else: 200, counted."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        server = self.server
        if self.path == "/health":
            if server.pids:  # the test knows the workers: find the owner of the probing
                # socket, which is open in Rex right now, waiting for this answer
                server.probers.append(connection_owner(self.client_address[1],
                                                       server.server_port, server.pids))
            code = 200 if server.healthy else 503
        else:
            server.hits += 1
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def flaky(upstream):
    up = upstream(Flaky)
    up.server.healthy, up.server.hits, up.server.probers, up.server.pids = True, 0, [], []
    return up


def admin_status(port: int) -> dict:
    return json.loads(send_request(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").body)


def verdict(admin: int, key: str) -> tuple[str, int]:
    """(health-check state, workers sending it traffic) of one upstream, per /status."""
    doc = admin_status(admin)
    row = next(u for u in doc["upstreams"] if u["key"] == key)
    return (row["health_check"] or {}).get("state", "-"), row["up_in"]


def worker_one(admin: int) -> int:
    doc = admin_status(admin)
    return next(w["pid"] for w in doc["workers"]
                if w["worker"] == 1 and w["generation"] == doc["generation"])


@pytest.fixture
def checked(rex, upstream):
    a, b = flaky(upstream), flaky(upstream)
    port, admin = free_port(), free_port()
    rex.write(site_config(port, f"""\
        - path: /api
          destination: ["{a.url}", "{b.url}"]
          health_check: {{path: /health, interval: 100ms, timeout: 1s, fails: 2, passes: 2}}
    """, f"""\
        workers: 2
        logging: {{access: off}}
        admin: {{port: {admin}}}
    """))
    rex.start(ports=(port, admin))
    return rex, port, admin, a, b


def hit(port: int, times: int) -> None:
    for _ in range(times):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=5) as resp:
            assert resp.status == 200


def test_active_checks_take_an_upstream_out_and_bring_it_back(checked):
    rex, port, admin, a, b = checked
    workers = [w["pid"] for w in admin_status(admin)["workers"]]
    a.server.pids = b.server.pids = workers
    wait_for(lambda: len(a.server.probers) >= 5 and len(b.server.probers) >= 5,
             what="a few probes of each upstream")
    probers = set(a.server.probers[-5:] + b.server.probers[-5:])
    assert probers == {worker_one(admin)}, (probers, workers)  # one prober, not one per worker

    a.server.healthy = False
    wait_for(lambda: verdict(admin, a.url) == ("down", 0), what="a marked down in every worker")
    before = a.server.hits
    hit(port, 10)
    assert a.server.hits == before  # no traffic to a down upstream, from either worker
    line = f"upstream {a.url}  route /api (site 0)  up in 0/2 workers  failures 0  health " \
           "/health: down"
    wait_for(lambda: line in rex.cli("status").stdout, what="`rex status` showing it")

    # A reload starts from what the probes found: a stays out from the first request on.
    rex.signal(signal.SIGHUP)
    wait_for(lambda: admin_status(admin)["generation"] == 2
             and admin_status(admin)["state"] == "serving", what="generation 2 serving")
    hit(port, 10)
    assert a.server.hits == before
    a.server.pids = b.server.pids = [w["pid"] for w in admin_status(admin)["workers"]]
    seen = len(a.server.probers)  # from here on: generation 1's leftovers, then generation 2
    wait_for(lambda: len(a.server.probers) >= seen + 4, what="probes from generation 2")
    assert set(a.server.probers[-3:]) == {worker_one(admin)}

    a.server.healthy = True
    wait_for(lambda: verdict(admin, a.url) == ("up", 2), what="a back up in every worker")
    hit(port, 10)
    assert a.server.hits > before


def test_a_route_shows_only_its_own_health_check(rex, upstream):
    """Issue 17: a route without a check showed the probe another route defined for the
    same upstream; a second check (another path) showed whichever was read last."""
    a = flaky(upstream)
    port, admin = free_port(), free_port()
    rex.write(site_config(port, f"""\
        - path: /checked
          destination: "{a.url}"
          health_check: {{path: /health, interval: 100ms, fails: 1}}
        - path: /plain
          destination: "{a.url}"
        - path: /other
          destination: "{a.url}"
          health_check: {{path: /other-health, interval: 100ms}}
    """, f"""\
        workers: 1
        logging: {{access: off}}
        admin: {{port: {admin}}}
    """))
    rex.start(ports=(port, admin))
    a.server.healthy = False  # /health fails; /other-health (any other path) answers 200

    def rows() -> dict | None:
        found = {u["route"]: u for u in admin_status(admin)["upstreams"]}
        checked, other = found["/checked"]["health_check"], found["/other"]["health_check"]
        done = checked["state"] == "down" and other["probes"] >= 2
        return found if done and found["/checked"]["up_in"] == 0 else None

    found = wait_for(rows, what="both checks probed, /checked taken out")
    assert found["/plain"]["health_check"] is None
    assert found["/plain"]["up_in"] == 1  # and its traffic still goes there
    assert found["/checked"]["health_check"]["path"] == "/health"
    assert found["/other"]["health_check"]["path"] == "/other-health"
    assert found["/other"]["health_check"]["state"] == "up"
    lines = rex.cli("status").stdout.splitlines()
    [plain] = [line for line in lines if "route /plain " in line]
    assert "health" not in plain
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/plain", timeout=5) as resp:
        assert resp.status == 200


def test_a_lone_upstream_the_prober_marks_down_answers_502_then_recovers(rex, upstream):
    # A group of one takes a short path (no clock, no passive health): the prober's
    # verdict must still stop its traffic, as with any group.
    a = flaky(upstream)
    port = free_port()
    rex.write(site_config(port, f"""\
        - path: /api
          destination: "{a.url}"
          health_check: {{path: /health, interval: 100ms, timeout: 1s, fails: 1, passes: 1}}
    """, "logging: {access: off}\n"))
    rex.start(ports=(port,))

    def status() -> int:
        return send_request(port, b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n").status

    assert status() == 200
    a.server.healthy = False
    wait_for(lambda: status() == 502, what="the lone upstream out of rotation")
    before = a.server.hits
    assert status() == 502 and a.server.hits == before  # no request reached it
    a.server.healthy = True
    wait_for(lambda: status() == 200, what="the lone upstream back")
