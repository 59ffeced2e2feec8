"""Balancing algorithms, passive and active health, and the health-check prober.

The policy tests drive ``UpstreamGroup`` with a fake clock and a seeded RNG:
no sockets, no sleeps. The prober tests use real servers on 127.0.0.1.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import free_port

from rex_workers.config.model import HealthCheck, Upstream
from rex_workers.proxy.balancer import BALANCERS, RING_POINTS, UpstreamGroup
from rex_workers.proxy.health import ActiveCheckState, PassiveHealth
from rex_workers.proxy.healthcheck import probe, request_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def node(name: str, **options) -> Upstream:
    """An upstream whose host is ``name``, so picks read as letters."""
    return Upstream(url=f"http://{name}:80", scheme="http", host=name, port=80, **options)


def group(*upstreams: Upstream, balance: str = "round_robin", clock: Clock | None = None,
          seed: int = 7) -> UpstreamGroup:
    return UpstreamGroup(upstreams, balance, clock or Clock(), random.Random(seed))


def picks(g: UpstreamGroup, n: int, client_ip: str = "", exclude=()) -> str:
    """Hosts of ``n`` consecutive choices, as a string of letters ("" for None)."""
    out = []
    for _ in range(n):
        up = g.choose(client_ip, exclude)
        out.append(up.host if up else "-")
    return "".join(out)


def take_down(g: UpstreamGroup, up: Upstream) -> None:
    for _ in range(up.max_fails):
        g.failed(up)


# ------------------------------------------------------------------ registry


def test_registry_names_every_balancer_and_rejects_unknown_ones():
    assert set(BALANCERS) == {"round_robin", "weighted", "least_conn", "ip_hash", "random"}
    assert BALANCERS["weighted"] is BALANCERS["round_robin"]
    for name in BALANCERS:
        assert group(node("a"), node("b"), balance=name).choose("10.0.0.1").host in "ab"
    with pytest.raises(ValueError, match="unknown balance 'fastest'"):
        UpstreamGroup([node("a")], "fastest")


# ------------------------------------------------------------------ round robin


def test_round_robin_rotates_evenly():
    g = group(node("a"), node("b"), node("c"))
    sequence = picks(g, 300)
    assert sequence[:6] == "abcabc"
    assert Counter(sequence) == {"a": 100, "b": 100, "c": 100}


def test_weights_one_to_three_give_exactly_a_quarter_and_three_quarters():
    g = group(node("a", weight=1), node("b", weight=3), balance="weighted")
    sequence = picks(g, 400)
    assert Counter(sequence) == {"a": 100, "b": 300}
    # smooth: the light one comes once in every window of four, never in a burst
    assert all(Counter(sequence[i:i + 4])["a"] == 1 for i in range(0, 400, 4))


def test_smooth_weighted_round_robin_interleaves_like_nginx():
    g = group(node("a", weight=5), node("b"), node("c"))
    assert picks(g, 14) == "aabacaa" * 2


def test_round_robin_skips_a_down_upstream_and_stays_even_among_the_rest():
    g = group(node("a"), node("b"), node("c"))
    g.failed(node("b"))
    assert Counter(picks(g, 100)) == {"a": 50, "c": 50}


# ------------------------------------------------------------------ least_conn


def test_least_conn_prefers_the_idle_upstream():
    a, b, c = node("a"), node("b"), node("c")
    g = group(a, b, c, balance="least_conn")
    for up in (a, a, b):
        g.acquire(up)
    assert picks(g, 5) == "ccccc"
    g.acquire(c)
    g.acquire(c)
    assert g.choose().host == "b"  # a: 2, b: 1, c: 2


def test_least_conn_breaks_ties_round_robin_and_weighs_connections():
    a, b = node("a", weight=2), node("b")
    g = group(a, b, balance="least_conn")
    assert picks(g, 6) == "abaaba"  # all idle: smooth weighted round robin
    g.acquire(a)
    g.acquire(a)
    assert g.choose().host == "b"  # 2 conns on weight 2 vs 0 on weight 1
    g.acquire(b)
    assert {picks(g, 1), picks(g, 1)} == {"a", "b"}  # 2/2 == 1/1: ties rotate


def test_least_conn_spreads_long_requests_evenly():
    g = group(node("a"), node("b"), node("c"), balance="least_conn")
    for _ in range(30):
        g.acquire(g.choose())  # never released: like 30 open WebSockets
    assert [row["conns"] for row in g.state()] == [10, 10, 10]


# ------------------------------------------------------------------ random (p2c)


def test_power_of_two_never_picks_the_busier_of_two():
    a, b = node("a"), node("b")
    g = group(a, b, balance="random")
    for _ in range(5):
        g.acquire(a)
    assert picks(g, 200) == "b" * 200


def test_power_of_two_never_picks_the_busiest_and_balances_load():
    ups = [node(name) for name in "abcd"]
    g = group(*ups, balance="random")
    for count, up in enumerate(ups):
        for _ in range(count * 3):
            g.acquire(up)  # a: 0, b: 3, c: 6, d: 9
    assert "d" not in picks(g, 500)
    idle = group(*ups, balance="random", seed=1)
    counts = Counter(picks(idle, 4000))
    assert all(850 < counts[name] < 1150 for name in "abcd"), counts


def test_power_of_two_draws_by_weight():
    g = group(node("a", weight=1), node("b", weight=3), balance="random", seed=3)
    share = Counter(picks(g, 4000))["b"] / 4000
    assert 0.72 < share < 0.78


# ------------------------------------------------------------------ ip_hash


def client_ips(n: int) -> list[str]:
    rng = random.Random(42)
    return [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
            f"{rng.randrange(1, 255)}" for _ in range(n)]


def assignment(g: UpstreamGroup, ips: list[str]) -> dict[str, str]:
    return {ip: g.choose(ip).host for ip in ips}


def test_ip_hash_is_sticky_and_spreads_clients():
    ips = client_ips(3000)
    g = group(node("a"), node("b"), node("c"), balance="ip_hash")
    first = assignment(g, ips)
    assert assignment(g, list(reversed(ips))) == first
    counts = Counter(first.values())
    assert all(800 < counts[name] < 1200 for name in "abc"), counts
    # the ring depends on the upstreams, not on their order or on the worker
    again = group(node("c"), node("a"), node("b"), balance="ip_hash")
    assert assignment(again, ips) == first


def test_ip_hash_adding_an_upstream_moves_about_a_quarter_of_clients():
    ips = client_ips(3000)
    before = assignment(group(node("a"), node("b"), node("c"), balance="ip_hash"), ips)
    after = assignment(group(node("a"), node("b"), node("c"), node("d"), balance="ip_hash"),
                       ips)
    moved = [ip for ip in ips if before[ip] != after[ip]]
    assert 0.17 < len(moved) / len(ips) < 0.33
    assert {after[ip] for ip in moved} == {"d"}  # nobody moves between the old ones


def test_ip_hash_weights_add_ring_points():
    ips = client_ips(3000)
    g = group(node("a", weight=3), node("b"), balance="ip_hash")
    assert len(g._tiers[0][1]._points) == RING_POINTS * 4
    share = Counter(assignment(g, ips).values())["a"] / len(ips)
    assert 0.68 < share < 0.82


def test_ip_hash_moves_only_the_down_upstreams_clients_and_brings_them_back():
    ips = client_ips(1000)
    clock = Clock()
    b = node("b")
    g = group(node("a"), b, node("c"), balance="ip_hash", clock=clock)
    before = assignment(g, ips)
    g.failed(b)
    during = assignment(g, ips)
    assert all(during[ip] == before[ip] for ip in ips if before[ip] != "b")
    assert "b" not in during.values()
    clock.advance(10)
    trial_ip = next(ip for ip in ips if before[ip] == "b")
    assert g.choose(trial_ip).host == "b"
    g.succeeded(b)
    assert assignment(g, ips) == before


# ------------------------------------------------------------------ passive health


def test_max_fails_within_fail_timeout_marks_down_until_fail_timeout_passes():
    clock = Clock()
    a, b = node("a", max_fails=3, fail_timeout=10), node("b")
    g = group(a, b, clock=clock)
    assert [g.failed(a) for _ in range(3)] == [False, False, True]
    assert picks(g, 20) == "b" * 20
    assert g.state()[0]["up"] is False
    clock.advance(9.9)
    assert "a" not in picks(g, 20)
    clock.advance(0.1)
    assert g.choose().host == "a"  # back on its own: this request is the trial
    assert picks(g, 5) == "bbbbb"  # one trial at a time
    g.succeeded(a)
    assert sorted(picks(g, 4)) == list("aabb")


def test_a_failed_trial_takes_it_out_for_another_fail_timeout():
    clock = Clock()
    a, b = node("a", fail_timeout=10), node("b")
    g = group(a, b, clock=clock)
    g.failed(a)
    clock.advance(10)
    assert g.choose(exclude={"http://b:80"}).host == "a"
    g.failed(a)
    clock.advance(9)
    assert picks(g, 10) == "b" * 10
    clock.advance(1)
    assert "a" in picks(g, 2)


def test_failures_spread_over_more_than_fail_timeout_do_not_mark_down():
    clock = Clock()
    a = node("a", max_fails=3, fail_timeout=10)
    g = group(a, node("b"), clock=clock)
    for _ in range(10):
        assert g.failed(a) is False
        clock.advance(5.1)  # never three within ten seconds
    assert picks(g, 4) == "abab"


def test_a_late_success_of_an_old_request_does_not_revive_a_down_upstream():
    clock = Clock()
    a = node("a")
    g = group(a, node("b"), clock=clock)
    g.choose()  # a request goes to a ...
    g.failed(a)  # ... another one to a fails: a is out
    clock.advance(1)
    g.succeeded(a)  # the first one finishes fine, but started before the failure
    assert picks(g, 4) == "bbbb"


def test_max_fails_zero_and_a_lone_upstream_are_never_marked_down():
    a = node("a", max_fails=0)
    g = group(a, node("b"))
    for _ in range(100):
        g.failed(a)
    assert picks(g, 2) == "ab"
    lone = node("a", max_fails=1)
    g = group(lone)
    g.failed(lone)  # nginx: nowhere else to go, so never "no live upstreams"
    assert g.choose().host == "a"


def test_passive_health_state_machine_directly():
    health = PassiveHealth(max_fails=2, fail_timeout=5)
    assert health.available(0) and health.fails == 0
    assert health.failed(1) is False and health.fails == 1
    assert health.failed(6) is True  # 1 and 6 are within five seconds of each other
    assert not health.available(10.9) and health.down_for(10.9) == pytest.approx(0.1)
    assert health.available(11)


# ------------------------------------------------------------------ backups, all down, exclude


def test_backups_serve_only_when_every_primary_is_down_and_give_way_on_recovery():
    clock = Clock()
    a, b, c = node("a"), node("b"), node("c", backup=True)
    g = group(a, b, c, clock=clock)
    assert "c" not in picks(g, 50)
    g.failed(a)
    assert picks(g, 5) == "bbbbb"
    clock.advance(3)
    g.failed(b)
    assert picks(g, 5) == "ccccc"
    clock.advance(7)  # a's ten seconds are over: a trial goes to a primary, not to c
    assert g.choose().host == "a"
    g.succeeded(a)
    assert picks(g, 5) == "aaaaa"  # b still out until its own trial
    clock.advance(3)
    assert "b" in picks(g, 2)
    g.succeeded(b)
    assert "c" not in picks(g, 50)


def test_retries_fall_back_to_backups_once_every_primary_was_tried():
    a, b = node("a"), node("b", backup=True)
    g = group(a, b)
    assert g.choose(exclude={a.key}).host == "b"


def test_all_down_returns_none_at_once():
    a, b, c = node("a"), node("b"), node("c", backup=True)
    g = group(a, b, c)
    for up in (a, b, c):
        g.failed(up)
    for name in BALANCERS:
        g2 = group(a, b, c, balance=name)
        for up in (a, b, c):
            g2.failed(up)
        assert g2.choose("10.1.2.3") is None
    assert g.choose() is None
    assert [row["up"] for row in g.state()] == [False, False, False]


@pytest.mark.parametrize("balance", sorted(BALANCERS))
def test_exclude_is_honoured_by_every_balancer(balance):
    a, b, c = node("a"), node("b"), node("c")
    g = group(a, b, c, balance=balance)
    for ip in client_ips(50):
        assert g.choose(ip, {a.key, c.key}).host == "b"
        assert g.choose(ip, {a.key, b.key, c.key}) is None


# ------------------------------------------------------------------ active health


def test_active_check_state_counts_consecutive_results():
    state = ActiveCheckState(fails=2, passes=3)
    assert state.up
    assert [state.record(ok) for ok in (False, True, False)] == [None, None, None]
    assert state.record(False) is False and not state.up
    assert [state.record(ok) for ok in (True, True, False, True, True)] == [None] * 5
    assert state.record(True) is True and state.up
    assert state.record(True) is None


def test_active_verdicts_take_upstreams_out_and_back():
    a, b = node("a"), node("b")
    g = group(a, b)
    g.set_active_health(a.key, False)
    assert picks(g, 4) == "bbbb"
    g.set_active_health("http://elsewhere:80", False)  # another group's upstream
    g.set_active_health(b.key, False)
    assert g.choose() is None  # even a lone-looking group: the prober's word counts
    g.set_active_health(a.key, True)
    g.set_active_health(b.key, True)
    assert picks(g, 2) == "ab"


def test_active_recovery_clears_passive_down():
    a, b = node("a"), node("b")
    g = group(a, b)
    g.failed(a)
    g.set_active_health(a.key, False)
    g.set_active_health(a.key, True)
    assert picks(g, 2) == "ab"


def test_state_reports_every_upstream():
    clock = Clock()
    a, b = node("a", weight=2), node("b", backup=True)
    g = group(a, b, clock=clock)
    g.acquire(a)
    g.release(b)  # never below zero
    g.failed(b)
    assert g.state() == [
        {"key": "http://a:80", "url": "http://a:80", "up": True, "active_up": True,
         "fails": 0, "down_for": 0.0, "conns": 1, "weight": 2, "backup": False},
        {"key": "http://b:80", "url": "http://b:80", "up": False, "active_up": True,
         "fails": 1, "down_for": 10.0, "conns": 0, "weight": 1, "backup": True},
    ]


def test_take_chooses_and_acquires_as_the_two_calls_do():
    a, b = node("a"), node("b")
    g = group(a, b)
    assert [g.take().host for _ in range(3)] == ["a", "b", "a"]
    assert [row["conns"] for row in g.state()] == [2, 1]
    assert g.take(exclude=("http://a:80", "http://b:80")) is None
    assert g.passive  # max_fails 1: a success can bring one back
    assert not group(node("a", max_fails=0), node("b", max_fails=0)).passive


@pytest.mark.parametrize("backup", [False, True])
def test_a_lone_upstream_keeps_every_rule_on_its_short_path(backup):
    clock = Clock()
    lone = node("a", backup=backup)
    g = group(lone, clock=clock)
    assert not g.passive  # never marked down passively: successes change nothing
    for _ in range(5):
        g.failed(lone)
    assert g.take() is lone and g.choose() is lone
    assert g.state()[0]["conns"] == 1 and g.state()[0]["up"]
    assert g.take(exclude=(lone.key,)) is None  # tried already: no retry on itself
    g.set_active_health(lone.key, False)  # the prober's verdict: a 502, as before
    assert g.take() is None and g.choose() is None
    g.set_active_health(lone.key, True)
    assert g.take() is lone
    g.release(lone)
    g.release(lone)
    g.release(lone)  # never below zero
    assert g.state()[0]["conns"] == 0


# ------------------------------------------------------------------ the prober


class StatusFromPath(BaseHTTPRequestHandler):
    """Answers ``GET /<status>`` with that status and records what it received."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))
        self.send_response(int(self.path.strip("/").split("?")[0]))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def local(port: int, scheme: str = "http") -> Upstream:
    return Upstream(url=f"{scheme}://127.0.0.1:{port}", scheme=scheme, host="127.0.0.1",
                    port=port)


CHECK = HealthCheck(path="/200?full=1", timeout=2.0)


def test_probe_passes_on_2xx_and_3xx_only_and_sends_a_plain_get(upstream):
    server = upstream(StatusFromPath)
    verdicts = {status: probe(local(server.port), HealthCheck(path=f"/{status}", timeout=2.0))
                for status in (200, 204, 302, 304, 404, 500, 503)}
    assert verdicts == {200: True, 204: True, 302: True, 304: True,
                        404: False, 500: False, 503: False}
    assert probe(local(server.port), CHECK) is True
    path, headers = server.requests[-1]
    assert path == "/200?full=1"
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["Connection"] == "close"
    assert headers["User-Agent"] == "rex-health-check"


def test_probe_fails_fast_on_a_closed_port():
    started = time.monotonic()
    assert probe(local(free_port()), CHECK) is False
    assert time.monotonic() - started < 1.0


def test_request_bytes_name_the_upstream():
    up = Upstream(url="http://api.internal", scheme="http", host="api.internal", port=80)
    assert request_bytes(up, HealthCheck("/")) == (
        b"GET / HTTP/1.1\r\nHost: api.internal\r\nUser-Agent: rex-health-check\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n")


@pytest.fixture
def listener():
    """A socket that accepts connections (in the kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def test_probe_of_a_stalled_server_fails_within_the_timeout(listener):
    check = HealthCheck(timeout=0.3)
    started = time.monotonic()
    assert probe(local(listener.getsockname()[1]), check) is False
    assert 0.25 < time.monotonic() - started < 1.0


def serve_once(listener: socket.socket, reply) -> threading.Thread:
    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            reply(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_probe_timeout_bounds_the_whole_exchange(listener):
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
            if stop.wait(0.05):
                return
            conn.sendall(bytes([byte]))

    thread = serve_once(listener, trickle)
    started = time.monotonic()
    assert probe(local(listener.getsockname()[1]), HealthCheck(timeout=0.3)) is False
    assert time.monotonic() - started < 1.0
    stop.set()
    thread.join(5)


@pytest.mark.parametrize("reply", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"",  # closed without answering
])
def test_probe_fails_on_a_broken_response(listener, reply):
    thread = serve_once(listener, lambda conn: conn.sendall(reply))
    assert probe(local(listener.getsockname()[1]), CHECK) is False
    thread.join(5)


def test_probe_skips_interim_responses(listener):
    reply = b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    thread = serve_once(listener, lambda conn: conn.sendall(reply))
    assert probe(local(listener.getsockname()[1]), CHECK) is True
    thread.join(5)


def test_probe_over_tls(listener):
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    def run() -> None:
        raw, _ = listener.accept()
        with server_context.wrap_socket(raw, server_side=True) as conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    up = local(listener.getsockname()[1], "https")
    assert probe(up, CHECK, ssl_context=client_context) is True
    thread.join(5)
    # without trusting the CA the handshake fails, and so does the probe
    thread = threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True)
    thread.start()
    assert probe(up, CHECK) is False
    thread.join(5)


def test_probe_with_gevent_sockets_only_blocks_its_greenlet(listener):
    gevent = pytest.importorskip("gevent")
    from gevent import socket as gsocket

    up = local(listener.getsockname()[1])
    check = HealthCheck(timeout=0.4)
    started = time.monotonic()
    jobs = [gevent.spawn(probe, up, check, gsocket) for _ in range(5)]
    gevent.joinall(jobs, timeout=5)
    assert [job.value for job in jobs] == [False] * 5
    assert time.monotonic() - started < 1.2  # concurrent, not 5 x 0.4 s
