"""End-to-end load balancing and passive health (issue 7) through a real master.

One master with one worker serves every route here, so each route's balancer
state is that single worker's and the counts are exact. Each test uses its
own route (its own ``UpstreamGroup``), so tests do not disturb one another.
Every upstream answers with its name (``lb_servers.Backend``), which is how a
test sees who served a request.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import pytest
from conftest import free_port, wait_for
from lb_servers import CLOSE, READ_CLOSE, Backend, BlackHole

from rex_workers.config.schema import parse_destination
from rex_workers.proxy.balancer import UpstreamGroup

WEIGHTED = ("round_robin", "weighted", "least_conn", "random")
FAIL_TIMEOUT = 1.0  # seconds a failed upstream of /backup stays out
CONNECT_TIMEOUT = 5.0  # of /alldown: what trying a black-holed upstream would cost


class Client:
    """One keep-alive connection to Rex, from a chosen 127.0.0.0/8 source address."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10) -> None:
        # Linux routes all of 127.0.0.0/8 to lo, so any of it can be bound as a source.
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                               source_address=(source, 0))

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
        """(status, name of the upstream that answered, "" when Rex answered itself)."""
        self.conn.request(method, path, body=body)
        resp = self.conn.getresponse()
        data = resp.read()
        name = json.loads(data)["name"] if resp.status == 200 else ""
        return resp.status, name

    def names(self, path: str, n: int) -> list[str]:
        """Who served each of ``n`` GETs, each of which must succeed."""
        out = []
        for i in range(n):
            status, name = self.request("GET", f"{path}/{i}")
            assert status == 200, f"GET {path}/{i} #{i}: {status}"
            out.append(name)
        return out

    def close(self) -> None:
        self.conn.close()


def entry(backend: Backend | str, **options) -> str:
    """One destination entry as a YAML flow mapping."""
    url = backend if isinstance(backend, str) else backend.url
    return "{" + ", ".join([f'url: "{url}"', *(f"{k}: {v}" for k, v in options.items())]) + "}"


def route(path: str, entries: list[str], **options) -> str:
    lines = [f"- path: {path}", *(f"  {k}: {v}" for k, v in options.items()),
             "  destination:", *(f"    - {e}" for e in entries)]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def lb(rex_module):
    hold = threading.Event()
    b: dict[str, Backend] = {}
    for name in ("a", "b", "c", "w1", "w3", "free", "p1", "p2", "bk", "g1", "g2"):
        b[name] = Backend(name).start()
    b["held"] = Backend("held", hold=hold).start()
    b["closer"] = Backend("closer", mode=CLOSE).start()
    b["reader"] = Backend("reader", mode=READ_CLOSE).start()
    dead, down1, down2, dead2 = free_port(), free_port(), free_port(), free_port()  # unused
    abc = [entry(b["a"]), entry(b["b"]), entry(b["c"])]
    routes = [
        route("/rr", abc),
        *(route(f"/w/{algo}", [entry(b["w1"], weight=1), entry(b["w3"], weight=3)],
                balance=algo) for algo in WEIGHTED),
        route("/ip", abc, balance="ip_hash"),
        route("/lc", [entry(b["held"]), entry(b["free"])], balance="least_conn"),
        route("/dead", [entry(f"http://127.0.0.1:{dead}"), *abc[:2]]),
        route("/dead0", [entry(f"http://127.0.0.1:{dead}", max_fails=0), *abc[:2]]),
        # Two never-taken-out refusers and retries 0: refusals do not use up retries.
        route("/refused0", [entry(f"http://127.0.0.1:{dead}", max_fails=0),
                            entry(f"http://127.0.0.1:{dead2}", max_fails=0), abc[2]],
              retries=0),
        route("/closer", [entry(b["closer"], max_fails=0), abc[0]]),
        route("/reader", [entry(b["reader"], max_fails=0), abc[1]]),
        # Default retries (1): the request that finds both primaries dead still reaches
        # the backup, as attempts that never reached an upstream do not use up retries.
        route("/backup", [entry(b["p1"], fail_timeout=f"{FAIL_TIMEOUT}s"),
                          entry(b["p2"], fail_timeout=f"{FAIL_TIMEOUT}s"),
                          entry(b["bk"], backup="true")]),
        route("/alldown", [entry(f"http://127.0.0.1:{down1}", fail_timeout="60s"),
                           entry(f"http://127.0.0.1:{down2}", fail_timeout="60s",
                                 backup="true")],
              timeouts=f"{{connect: {CONNECT_TIMEOUT}s}}"),
    ]
    port = rex_module.serve("\n".join(routes), f"""\
        upstream: [127.0.0.1:{b["g1"].port}, 127.0.0.1:{b["g2"].port}]
        logging: {{access: off}}
        workers: 1
    """)
    yield port, b, hold, (dead, down1, down2)
    hold.set()
    for backend in b.values():
        backend.stop()


@pytest.fixture
def client(lb):
    c = Client(lb[0])
    yield c
    c.close()


# ------------------------------------------------------------------ algorithms


def test_round_robin_is_even_and_interleaved(client):
    names = client.names("/rr", 30)
    assert Counter(names) == {"a": 10, "b": 10, "c": 10}
    # Not just even in total: every run of three visits each upstream once.
    assert all(len(set(names[i:i + 3])) == 3 for i in range(0, 30, 3)), names


@pytest.mark.parametrize("algo", WEIGHTED)
def test_weights_one_to_three(client, algo):
    n = 400 if algo == "random" else 40
    counts = Counter(client.names(f"/w/{algo}", n))
    if algo == "random":
        # Drawn by weight: 100 expected; 60..140 is over four and a half standard deviations.
        assert 60 <= counts["w1"] <= 140 and counts["w1"] + counts["w3"] == n, counts
    else:
        # Smooth round robin (least_conn breaks its ties with it when idle): exact shares.
        assert counts == {"w1": 10, "w3": 30}


def test_ip_hash_keeps_each_client_address_on_one_upstream(lb):
    port, b, _, _ = lb
    sources = [f"127.0.0.{i}" for i in range(2, 14)]
    served: dict[str, set[str]] = {}
    for source in sources:
        for _ in range(2):  # two connections per address, three requests on each
            c = Client(port, source)
            served.setdefault(source, set()).update(c.names("/ip", 3))
            c.close()
    assert all(len(names) == 1 for names in served.values()), served
    mapping = {source: names.pop() for source, names in served.items()}
    # The address really is what is hashed: 12 addresses do not all land on one upstream.
    assert len(set(mapping.values())) >= 2, mapping
    # And the whole address, the same way in every worker and node (docs: the ring).
    ring = UpstreamGroup([parse_destination(b[n].url) for n in "abc"], "ip_hash")
    by_port = {b[n].port: n for n in "abc"}
    assert mapping == {s: by_port[ring.choose(s).port] for s in sources}


def test_least_conn_avoids_the_upstream_that_is_busy(lb, client):
    port, b, hold, _ = lb
    held = b["held"]
    # Stall one request on `held` (the first or, after a tie went to `free`, the second).
    stalled: list[tuple[int, str]] = []
    for _ in range(2):
        slow = Client(port, timeout=30)
        thread = threading.Thread(target=lambda s=slow: stalled.append(s.request("GET", "/lc")))
        thread.start()
        wait_for(lambda t=thread: held.parked or not t.is_alive(), 5, what="a slow request")
        if held.parked:
            break
        slow.close()
    assert held.parked == 1
    # With round robin one of these would go to `held` and wait there for the whole test.
    fast = Client(port, timeout=5)
    assert fast.names("/lc", 20) == ["free"] * 20
    fast.close()
    assert len(held.hits) == 1
    hold.set()
    thread.join(10)
    slow.close()
    assert stalled[-1] == (200, "held")


# ------------------------------------------------------------------ failures and retries


@pytest.mark.parametrize("path", ["/dead", "/dead0"])
def test_a_dead_upstream_beside_live_ones_fails_no_get(client, path):
    # /dead: taken out after its first refusal. /dead0 (max_fails 0): never taken out, so
    # every third request is refused and retried on the next upstream.
    names = client.names(path, 30)
    assert set(names) == {"a", "b"}


def test_refused_connections_do_not_use_up_retries(client):
    # retries: 0 bounds attempts that reached an upstream; a refusal never did, so
    # every GET still finds the one live upstream behind the two refusing ones.
    assert client.names("/refused0", 9) == ["c"] * 9


def test_an_upstream_that_closes_without_answering_is_retried_for_get(lb, client):
    closer = lb[1]["closer"]
    before = closer.connections
    assert client.names("/closer", 12) == ["a"] * 12
    # max_fails 0 keeps it in rotation: it really was tried, again and again.
    assert closer.connections - before >= 4


def test_a_post_is_not_retried_once_it_was_sent(lb, client):
    reader, other = lb[1]["reader"], lb[1]["b"]
    # The first request of a fresh round robin goes to the first entry; loop in case not.
    for _ in range(2):
        before = len(reader.hits)
        status, name = client.request("POST", "/reader/pay", b"charge-once")
        if len(reader.hits) > before:
            break
        assert (status, name) == (200, "b")
    # The upstream read the POST and died: it may have acted on it, so no second try.
    assert status == 502
    assert reader.hits[-1] == ("POST", "/reader/pay", b"charge-once")
    assert not any(method == "POST" for method, _, _ in other.hits)
    # The same failure on a GET is retried on the other upstream.
    before = len(reader.hits)
    assert client.names("/reader", 4) == ["b"] * 4
    assert len(reader.hits) > before


# ------------------------------------------------------------------ passive health, backups


def test_backup_takes_over_and_gives_way(lb, client):
    _, b, _, _ = lb
    p1, p2, bk = b["p1"], b["p2"], b["bk"]
    assert sorted(client.names("/backup", 6)) == ["p1"] * 3 + ["p2"] * 3
    assert bk.hits == []
    p1.stop()
    p2.stop()
    # Both primaries refuse: the request that finds out is retried to the backup.
    assert client.names("/backup", 10) == ["bk"] * 10
    p1.start()
    # After fail_timeout a trial request goes to p1 again, and succeeds.
    deadline = FAIL_TIMEOUT + 5
    wait_for(lambda: client.names("/backup", 1) == ["p1"], deadline, 0.05, what="p1 back")
    before = len(bk.hits)
    assert client.names("/backup", 10) == ["p1"] * 10
    assert len(bk.hits) == before
    p2.start()  # for anything run later


def test_when_everything_is_down_the_502_is_immediate(lb, client, rex_module):
    _, _, _, (_, down1, down2) = lb
    # Both refuse: both are taken out for 60 s (this answer may take its time).
    assert client.request("GET", "/alldown/a")[0] == 502
    # Now one port would hang every connect for CONNECT_TIMEOUT and the other would answer:
    # a balancer that still tried them would be slow, or succeed.
    hole = BlackHole(down1)
    spare = Backend("spare", port=down2).start()
    try:
        started = time.monotonic()
        status, _ = client.request("GET", "/alldown/b")
        elapsed = time.monotonic() - started
        assert status == 502
        assert elapsed < CONNECT_TIMEOUT / 5, elapsed
        assert spare.connections == 0
        wait_for(lambda: "GET /alldown/b: no live upstream" in rex_module.output(), 5,
                 what="the error log line")
    finally:
        hole.close()
        spare.stop()


# ------------------------------------------------------------------ the global pool


def test_global_upstream_pool_rotates_when_no_route_matches(client):
    names = client.names("/no-route-here", 10)
    assert names in (["g1", "g2"] * 5, ["g2", "g1"] * 5)
