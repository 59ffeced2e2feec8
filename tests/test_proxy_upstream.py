"""Upstream connections: names resolved at connect time and cached briefly; dispatch order."""

from __future__ import annotations

import json
import socket
import urllib.request

from rex_workers.proxy.upstream import Resolver


class FakeDNS:
    def __init__(self) -> None:
        self.answer = "10.0.0.1"
        self.asked = 0
        self.now = 100.0

    def lookup(self, host: str, port: int) -> list:
        self.asked += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (self.answer, port))]


def test_names_are_cached_for_the_ttl_then_asked_again():
    dns = FakeDNS()
    resolver = Resolver(ttl=5, lookup=dns.lookup, clock=lambda: dns.now)
    assert resolver.resolve("app", 80)[0][4] == ("10.0.0.1", 80)
    dns.answer = "10.0.0.2"  # the container restarted elsewhere
    dns.now += 4
    assert resolver.resolve("app", 80)[0][4] == ("10.0.0.1", 80)
    assert dns.asked == 1
    dns.now += 2
    assert resolver.resolve("app", 80)[0][4] == ("10.0.0.2", 80)
    assert dns.asked == 2


def test_literal_addresses_never_reach_the_resolver():
    dns = FakeDNS()
    resolver = Resolver(lookup=dns.lookup, clock=lambda: dns.now)
    assert resolver.resolve("127.0.0.1", 3000)[0][4] == ("127.0.0.1", 3000)
    assert resolver.resolve("::1", 3000)[0][0] == socket.AF_INET6
    assert dns.asked == 0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_dispatch_order_static_routes_global_pool(rex, upstream, tmp_path):
    """An existing file (GET/HEAD) → routes → the global upstream → 404 (SPEC §4)."""
    routed, pooled = upstream(), upstream()
    public = tmp_path / "public"
    (public / "api").mkdir(parents=True)
    (public / "api" / "file.txt").write_text("from disk")
    port = rex.serve({"/api": f"http://localhost:{routed.port}"}, f"""\
        upstream: [localhost:{pooled.port}]
        logging: {{access: off}}
        workers: 1
    """, instance=f"public: {public}")
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/api/file.txt") == (200, b"from disk")
    status, body = get(f"{base}/api/missing.txt")
    assert status == 200 and json.loads(body)["port"] == routed.port  # a name, resolved
    status, body = get(f"{base}/elsewhere")
    assert status == 200 and json.loads(body)["port"] == pooled.port
    req = urllib.request.Request(f"{base}/api/file.txt", data=b"x", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["port"] == routed.port  # files answer GET/HEAD only
