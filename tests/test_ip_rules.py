"""``allow`` / ``deny`` through a real master and worker, over IPv4 and IPv6 sockets.

The tests' client is always 127.0.0.1 or ::1; other addresses arrive the way they do
in production, as ``X-Forwarded-For`` from a peer in ``trusted_proxies`` (127.0.0.1
here, never ::1), which is how the walk from the right is tested too.
"""

from __future__ import annotations

import socket

import pytest
from conftest import Rex, Upstream, free_port, read_reply

from rex_workers.access.clientip import ClientAddress, plain
from rex_workers.access.iprules import IPRule
from rex_workers.http.request import Request
from rex_workers.proxy.headers import TrustedProxies


def ask(port: int, path: str = "/", forwarded: str | None = None, host: str = "127.0.0.1"):
    head = f"GET {path} HTTP/1.1\r\nHost: site\r\n"
    if forwarded is not None:
        head += f"X-Forwarded-For: {forwarded}\r\n"
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(head.encode() + b"\r\n")
        return read_reply(s.makefile("rb")).status


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("iprules")
    (work / "public").mkdir()
    (work / "public" / "file.txt").write_text("hello\n")
    api = Upstream()
    rex = Rex(work, work / "home")
    rex.v4, rex.v6 = free_port(), free_port()
    rex.write(f"""\
        server:
          instances:
            - port: {rex.v4}
              host: 127.0.0.1
              public: ./public
              allow: [10.0.0.0/8, "2001:db8::/32"]
              routes:
                - {{path: /api, destination: "{api.url}"}}
                - {{path: /open, destination: "{api.url}", allow: all}}
                - {{path: /lab, destination: "{api.url}", deny: [10.6.0.0/16]}}
            - port: {rex.v6}
              host: "::1"
              deny: ["::1"]
              routes:
                - {{path: /api, destination: "{api.url}"}}
                - {{path: /mine, destination: "{api.url}", allow: ["::1/128"]}}
        trusted_proxies: [127.0.0.1]
        workers: 1
    """)
    rex.start(ports=(rex.v4,))
    yield rex
    rex.stop()
    api.close()


def test_allow_admits_listed_clients_only_for_every_responder(site):
    assert ask(site.v4, "/api") == 403  # 127.0.0.1 itself is not listed
    assert ask(site.v4, "/file.txt") == 403
    assert ask(site.v4, "/nothing") == 403
    assert ask(site.v4, "/api", "10.1.2.3") == 200
    assert ask(site.v4, "/file.txt", "10.1.2.3") == 200
    assert ask(site.v4, "/nothing", "10.1.2.3") == 404
    assert ask(site.v4, "/api", "192.0.2.1") == 403


def test_ipv6_clients_match_ipv6_blocks(site):
    assert ask(site.v4, "/api", "2001:db8::5") == 200
    assert ask(site.v4, "/api", "2001:db9::5") == 403
    assert ask(site.v6, "/api", host="::1") == 403  # deny ["::1"] on a real IPv6 socket
    assert ask(site.v6, "/mine", host="::1") == 200  # the route's own rule replaces it


def test_forwarded_addresses_count_only_from_trusted_proxies(site):
    # ::1 is no trusted proxy: its claim is ignored, and ::1 itself is denied
    assert ask(site.v6, "/api", "10.1.2.3", host="::1") == 403
    # read from the right: the hop 127.0.0.1 appended is the client; the rest is its word
    assert ask(site.v4, "/api", "10.9.9.9, 198.51.100.1") == 403
    assert ask(site.v4, "/api", "198.51.100.1, 10.9.9.9") == 200
    # a trusted proxy behind the trusted proxy is skipped
    assert ask(site.v4, "/api", "10.9.9.9, 127.0.0.1") == 200


def test_a_route_s_rule_replaces_its_instance_s(site):
    assert ask(site.v4, "/open") == 200  # allow: all
    assert ask(site.v4, "/open/x", "192.0.2.1") == 200
    # deny only: the instance's allow list no longer applies here
    assert ask(site.v4, "/lab", "192.0.2.1") == 200
    assert ask(site.v4, "/lab", "10.6.1.1") == 403


# -- the policy, without sockets ---------------------------------------------------


def request(peer: str, *forwarded: str) -> Request:
    headers = [(b"X-Forwarded-For", f.encode()) for f in forwarded]
    return Request("GET", b"/", "/", b"", "1.1", headers, client_addr=(peer, 1234))


def test_client_address_walks_forwarded_for_from_the_right():
    client = ClientAddress(TrustedProxies(["10.0.0.0/8"]))
    assert client(request("192.0.2.1", "10.1.1.1")) == "192.0.2.1"  # untrusted peer
    assert client(request("10.0.0.1")) == "10.0.0.1"
    assert client(request("10.0.0.1", "203.0.113.7, 10.2.2.2")) == "203.0.113.7"
    assert client(request("10.0.0.1", "198.51.100.1", "203.0.113.7")) == "203.0.113.7"
    assert client(request("10.0.0.1", "garbage, 10.2.2.2")) == "10.2.2.2"
    assert client(request("::ffff:10.0.0.1", "2001:db8::1")) == "2001:db8::1"
    assert plain("::ffff:192.0.2.1") == "192.0.2.1"


def test_ip_rule_deny_wins_over_allow():
    rule = IPRule(["10.0.0.0/8"], ["10.6.0.0/16"], client=lambda req: req.client_addr[0])
    assert rule.admits("10.1.1.1")
    assert not rule.admits("10.6.1.1")
    assert not rule.admits("2001:db8::1")
    assert not rule.admits("not-an-ip")
    assert rule(request("10.6.0.1")).status == 403
    assert rule(request("10.5.0.1")) is None
