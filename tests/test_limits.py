"""rate_limit, max_in_flight and rate_limits.store: real masters, real workers, a real Redis.

The budgets under test are slow to refill (10 an hour), so a test that takes a few
seconds sees exactly the burst and nothing it earned meanwhile.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import pytest
import yaml
from conftest import free_port, port_open, site_config, wait_for

from rex_workers.config.dump import dump
from rex_workers.config.loader import ConfigError, load_config
from rex_workers.shared.ratetable import STUCK, InFlightTable, RateTable, fingerprint, gcra

HOURLY = "rate_limit: {rate: 10/h, burst: 10, key: route}"


def get(port: int, path: str = "/", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One request on a fresh connection (so that the kernel spreads them over workers)."""
    lines = [f"GET {path} HTTP/1.1", "Host: t", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), dict(f.split(": ", 1) for f in fields), body


def statuses(port: int, count: int, path: str = "/", **kw) -> list[int]:
    return [get(port, path, **kw)[0] for _ in range(count)]


# ------------------------------------------------------------------ pure pieces


def test_gcra_allows_the_burst_then_one_request_per_interval():
    tat, now, allowed = 0.0, 100.0, []
    for _ in range(5):
        new, verdict = gcra(tat, now, 1.0, 3)
        allowed.append(verdict.allowed)
        tat = new if new is not None else tat
    assert allowed == [True, True, True, False, False]
    _, refused = gcra(tat, now, 1.0, 3)
    assert refused.retry_after == pytest.approx(1.0) and refused.reset == pytest.approx(3.0)
    assert gcra(tat, now + 1.0, 1.0, 3)[1].allowed  # one interval later: one more
    assert gcra(0.0, now, 1.0, 3)[1].remaining == 2


def test_rate_table_keeps_keys_apart_and_replaces_the_budget_nearest_full():
    table = RateTable(sets=1)  # one set of four: the fifth key must take a place

    def left(key: int) -> int:
        """Requests ``key`` may still make at time 0 (spending them)."""
        n = 0
        while table.take(key, 0.0, 1.0, 10) is None:
            n += 1
        return n

    keys = [fingerprint(f"k{n}") for n in range(5)]
    for n, key in enumerate(keys[:4]):
        for _ in range(n + 1):  # key n spends n + 1 of its 10
            assert table.take(key, 0.0, 1.0, 10) is None
    refused = table.take(keys[3], 0.0, 1.0, 4)  # a smaller burst: already spent
    assert refused.retry_after == pytest.approx(1.0) and not refused.allowed
    assert table.take(keys[4], 0.0, 1.0, 10) is None  # takes key 0's place, the least spent
    assert left(keys[3]) == 6  # the busiest one was kept: 4 spent
    assert left(keys[0]) == 10  # key 0 lost its place: a fresh budget
    table.close()


def test_a_lock_left_by_a_killed_worker_is_freed():
    table = RateTable(sets=1, stripes=1)
    pid = os.fork()
    if pid == 0:  # a worker killed inside a check, holding the lock
        table._locks[0].acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    started = time.monotonic()
    assert table.take(fingerprint("k"), 0.0, 1.0, 10) is None  # after STUCK, not forever
    assert time.monotonic() - started < STUCK + 1
    assert table.take(fingerprint("k"), 0.0, 1.0, 10) is None  # the lock works again at once
    assert time.monotonic() - started < STUCK + 1
    table.close()


def test_in_flight_counts_every_slot_and_forgets_a_dead_worker(tmp_path):
    path = tmp_path / "rex.config.yaml"
    path.write_text(site_config(8000, {"/": "http://127.0.0.1:9"}, instance="max_in_flight: 2"))
    table = InFlightTable(load_config(str(path)), slots=4)
    assert table.enter(0, 1, 2) and table.enter(0, 3, 2)
    assert not table.enter(0, 1, 2)  # two in flight on the node, whichever worker asks
    table.forget(3)  # the master reaped slot 3's worker
    assert table.enter(0, 1, 2) and table.total(0) == 2
    table.close()


BAD = """\
server:
  instances:
    - port: 8000
      rate_limit: {rate: 10/d, burst: 0, key: cookie}
      max_in_flight: 0
      routes:
        - path: /api
          destination: http://127.0.0.1:3000
          rate_limit:
            burst: 3
rate_limits: {store: "http://cache:6379", on_store_error: maybe}
user: no-such-user-here
group: staff
"""


def test_bad_limit_and_user_values_are_config_errors_with_lines(tmp_path):
    path = tmp_path / "rex.config.yaml"
    path.write_text(BAD.replace("staff", "no-such-group-here"))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    p = str(path)
    assert caught.value.errors == [
        f"{p}:4: server.instances.0.rate_limit.burst: must be at least 1",
        f"{p}:4: server.instances.0.rate_limit.key: must be client_ip, route or header:NAME "
        "(not 'cookie')",
        f"{p}:4: server.instances.0.rate_limit.rate: must be a count per s, m or h, like 10/s "
        "or 300/m (not '10/d')",
        f"{p}:5: server.instances.0.max_in_flight: must be at least 1",
        f"{p}:9: server.instances.0.routes.0.rate_limit.rate: required field",
        f"{p}:11: rate_limits.on_store_error: must be one of local, allow, deny (not 'maybe')",
        f"{p}:11: rate_limits.store: must be local or redis://HOST[:PORT][/DB] "
        "(not 'http://cache:6379')",
        f"{p}:12: user: no such user on this machine: 'no-such-user-here'",
        f"{p}:13: group: no such group on this machine: 'no-such-group-here'",
    ]


LIMITED = """\
server:
  instances:
    - port: 8000
      rate_limit: {rate: 300/m, burst: 20, key: "header:X-API-Key"}
      routes:
        - {path: /api, destination: "http://127.0.0.1:3000", max_in_flight: 5,
           rate_limit: {rate: 10/s, key: route}}
rate_limits: {store: "redis://127.0.0.1:6379/2", on_store_error: allow}
user: nobody
"""


def test_rex_config_shows_the_limits_and_they_load_back(tmp_path):
    path = tmp_path / "rex.config.yaml"
    path.write_text(LIMITED)
    config = load_config(str(path))
    doc = dump(config)
    assert doc["server"]["instances"][0]["rate_limit"] == {
        "rate": "300/m", "burst": 20, "key": "header:x-api-key"}
    assert doc["rate_limits"] == {"store": "redis://127.0.0.1:6379/2", "on_store_error": "allow"}
    copy = tmp_path / "effective.yaml"
    copy.write_text(yaml.safe_dump(doc))
    again = load_config(str(copy))
    assert (again.instances[0].routes[0].rate_limit, again.user) == (
        config.instances[0].routes[0].rate_limit, "nobody")
    assert again.instances[0].rate_limit == config.instances[0].rate_limit


# ------------------------------------------------------------------ one node


def test_one_budget_across_two_workers_with_the_ietf_fields(rex, tmp_path):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "index.html").write_text("hi\n")
    # reuse_port: each worker has its own socket and the kernel spreads connections.
    port = rex.serve({}, "workers: 2\nreuse_port: true\n",
                     instance=f"public: public\n{HOURLY}")
    assert len(rex.workers()) == 2
    got = statuses(port, 30)
    # Per-worker budgets would let about 20 through; one for the node lets 10.
    assert got.count(200) == 10 and got.count(429) == 20
    status, fields, body = get(port)
    assert status == 429 and b"429" in body
    assert fields["Retry-After"] == "360"  # 10 an hour: one every 6 minutes
    assert fields["RateLimit-Policy"] == '"rex";q=10;w=3600'
    assert fields["RateLimit"] == '"rex";r=0;t=3600'


def test_a_reload_keeps_an_unchanged_budget_and_restarts_a_changed_one(rex, tmp_path, upstream):
    up = upstream()
    config = site_config(free_port(), f"- {{path: /, destination: '{up.url}', {HOURLY}}}\n")
    rex.write(config)
    port = int(config.split("port: ")[1].split()[0])
    rex.start(ports=(port,))
    assert statuses(port, 12).count(200) == 10

    def reload(text: str, generation: int) -> None:
        rex.write(text)  # the master sees the file change and reloads
        wait_for(lambda: generation_of(rex) == generation, 20, what="the reload")

    reload(config + "max_requests: 100000\n", 2)  # the limit itself did not change
    assert statuses(port, 3) == [429] * 3
    reload(config.replace("burst: 10", "burst: 4"), 3)  # a new limit: a new budget
    assert statuses(port, 6).count(200) == 4


def test_the_routes_limit_wins_and_header_keys_have_their_own_budgets(rex, upstream):
    up = upstream()
    port = rex.serve(f"""
        - {{path: /api, destination: "{up.url}",
            rate_limit: {{rate: 10/h, burst: 2, key: "header:X-API-Key"}}}}
        - {{path: /, destination: "{up.url}"}}
        """, instance="rate_limit: {rate: 10/h, burst: 5}")
    for key in ("alice", "bob"):
        assert statuses(port, 3, "/api/x", headers={"X-API-Key": key}) == [200, 200, 429]
    assert statuses(port, 3, "/api/x") == [200, 200, 429]  # no key: the address's budget
    assert statuses(port, 6, "/other").count(200) == 5  # the instance's, untouched by /api


def generation_of(rex) -> int:
    try:
        return rex.status()["generation"]
    except (OSError, ValueError):  # not written yet, or being replaced
        return 0


class Held(BaseHTTPRequestHandler):
    """An upstream that answers only once the test lets it (``server.release``)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.arrived.append(self.path)
        self.server.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def test_max_in_flight_is_one_count_for_the_node_and_survives_a_killed_worker(rex, upstream):
    up = upstream(Held)
    up.server.arrived, up.server.release = [], threading.Event()
    port = rex.serve(f'- {{path: /, destination: "{up.url}", max_in_flight: 2}}\n',
                     "workers: 2\nreuse_port: true\n")
    with ThreadPoolExecutor(8) as pool:
        held = [pool.submit(get, port, f"/{n}") for n in range(2)]
        wait_for(lambda: len(up.server.arrived) == 2, what="two requests at the upstream")
        refused = [get(port, "/more") for _ in range(6)]
        assert {status for status, _, _ in refused} == {503}
        assert refused[0][1]["Retry-After"] == "1"
        # Workers killed with requests in flight: the master gives their places back.
        before = rex.workers()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(set(rex.workers()) - set(before)) == 2 and port_open(port),
                 what="replacement workers")
        up.server.release.set()
        for future in held:
            future.exception()  # cut by the kill: either outcome is fine here
        wait_for(lambda: get(port, "/after")[0] == 200, what="a place in flight again")


# ------------------------------------------------------------------ several nodes


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A redis-server of the test's own on a free port (not the system's), ended by pid."""
    pytest.importorskip("redis", reason="the redis package (the test extra) is not installed")
    binary = shutil.which("redis-server") or _install_redis()
    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), what="redis-server")
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _install_redis() -> str:
    """Install Debian's redis-server when the tests may (root, apt-get), else skip saying why."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("redis-server is not installed and cannot be (needs root and apt-get): "
                    "the shared-budget tests need a real Redis (apt-get install redis-server)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run = subprocess.run(["apt-get", "install", "-y", "redis-server"], env=env,
                         capture_output=True, text=True, timeout=600)
    binary = shutil.which("redis-server")
    if run.returncode != 0 or not binary:
        pytest.skip(f"apt-get could not install redis-server: {run.stderr.strip()[-300:]}")
    return binary


def test_two_masters_share_one_budget_through_redis(rex, upstream, redis_server):
    redis_port, _ = redis_server
    up = upstream()
    store = f"rate_limits: {{store: 'redis://127.0.0.1:{redis_port}/0'}}\n"
    route = (f"- {{path: /, destination: '{up.url}', "
             f"rate_limit: {{rate: 10/h, burst: 10, key: 'header:X-Node-Test'}}}}\n")
    ports = []
    for node in (rex, rex.make()):
        if node is not rex:  # the second master: its own directory, state and port
            node.workdir = rex.workdir / "second"
            node.workdir.mkdir()
            node.config, node.log = node.workdir / "rex.config.yaml", node.workdir / "rex.out"
        ports.append(free_port())
        node.write(site_config(ports[-1], route, store))
        node.start(ports=(ports[-1],))
    key = {"X-Node-Test": f"shared-{redis_port}"}  # fresh in this module's Redis
    got = [get(ports[n % 2], headers=key)[0] for n in range(20)]
    assert got.count(200) == 10 and got[10:] == [429] * 10  # one budget for both nodes


def test_without_redis_a_node_limits_locally_and_says_so(rex, upstream, tmp_path):
    up = upstream()
    dead = free_port()  # nothing listens there
    port = rex.serve(f"- {{path: /, destination: '{up.url}', {HOURLY}}}\n",
                     f"rate_limits: {{store: 'redis://127.0.0.1:{dead}/0'}}\n")
    assert statuses(port, 12).count(200) == 10  # the local budget, in the meantime
    wait_for(lambda: f"rate_limits.store redis://127.0.0.1:{dead}/0 failed" in rex.output(),
             what="the store's failure in the log")
    assert rex.output().count("rate_limits.store") == 1  # once, not once per request


def test_on_store_error_deny_refuses_with_503(rex, upstream):
    up = upstream()
    port = rex.serve(f"- {{path: /, destination: '{up.url}', {HOURLY}}}\n",
                     f"rate_limits: {{store: 'redis://127.0.0.1:{free_port()}/0', "
                     "on_store_error: deny}\n")
    assert statuses(port, 2) == [503, 503]
