"""Upstreams that answer with broken or ambiguous responses: 502, and no desync after.

The responses are data: ``tests/hostile/responses/*.http`` (format in
``tests/hostile/README.md``), plus a few oversized heads made in code. Each
case has its own route and raw upstream (so a desync cannot leak into the next
case): ``/case/<name>`` gets the case's bytes, ``/case/<name>/probe`` a plain
answer on the same keep-alive connections. After each case two probes go
through Rex; they must get exactly the probe's answer, so bytes left over from
a broken response never become the next client's response on a pooled
connection.

A ``<<pause>>`` line splits a response: the rest is sent only once the client
has its answer (Rex has pooled the connection by then), which is how a
framework that writes a body after a HEAD response, or a stray second answer,
reaches a proxy in real life.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from conftest import recv_head
from test_hostile_strict import Violation, load_case, read_replies, xfail_marks

CASES = Path(__file__).parent / "hostile" / "responses"
NAMES = sorted(p.stem for p in CASES.glob("*.http"))
PROBE = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nprobe ok"


# Oversized heads are generated, not stored: 2,000 fields, an 8 KB reason
# phrase, an 8 KB chunk extension, each over the 4 KB ``limits.header_bytes``.
BIG = {
    "many-fields": (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 2000 + b"Content-Length: 0\r\n\r\n",
                    "502"),
    "long-reason": (b"HTTP/1.1 200 " + b"O" * 8000 + b"\r\nContent-Length: 0\r\n\r\n", "502"),
    "long-chunk-line": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;"
                        + b"e" * 8000 + b"\r\nx\r\n0\r\n\r\n", "200"),
}


class Scripted:
    """A RawUpstream handler: the first request gets the case's bytes, later ones ``PROBE``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = threading.Event()  # the client has its answer: send the rest
        self.rest_sent = threading.Event()

    def __call__(self, sock: socket.socket) -> None:
        while True:
            try:
                head = recv_head(sock)
            except ConnectionError:
                return
            if head.split(b" ", 2)[1].endswith(b"/probe"):
                sock.sendall(PROBE)
                continue
            if self.name in BIG:
                sock.sendall(BIG[self.name][0])
                continue
            meta, parts = load_case(CASES / f"{self.name}.http")
            sock.sendall(parts[0])
            for part in parts[1:]:
                self.release.wait(10)
                sock.sendall(part)
                self.rest_sent.set()
            if meta.get("then") == "close":
                return


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    """One route and one upstream per case, so a desync in one case cannot leak into another."""
    scripts = {name: Scripted(name) for name in [*NAMES, *BIG]}
    routes = "".join(
        f'- {{path: /case/{name}, destination: "{upstream_module.raw(script).url}",'
        f" retries: 0, timeouts: {{read: 2}}}}\n" for name, script in scripts.items())
    port = rex_module.serve(routes, """\
        limits: {header_bytes: 4k}
        logging: {access: off}
        workers: 1
    """)
    return port, scripts


def ask(port: int, method: str, path: str) -> list:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"%s %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                  % (method.encode(), path.encode()))
        return read_replies(s, head_requests=1 if method == "HEAD" else 0)[0]


def probe(port: int, name: str) -> None:
    """Two probes: the first may meet a pooled connection, the second surely does."""
    for _ in range(2):
        replies = ask(port, "GET", f"/case/{name}/probe")
        assert [(r.status, r.body) for r in replies] == [(200, b"probe ok")]


@pytest.mark.parametrize("name", [pytest.param(n, marks=xfail_marks(CASES / f"{n}.http"))
                                  for n in NAMES])
def test_response_case(site, name):
    port, scripts = site
    script = scripts[name]
    meta, parts = load_case(CASES / f"{name}.http")
    expect = meta["expect"]
    if expect == "cut":
        # The head was relayed before the upstream failed: closing is the only
        # way left to tell the client, and a strict reader must see it short.
        with pytest.raises(Violation, match=r"cut short|shorter"):
            ask(port, meta.get("method", "GET"), f"/case/{name}")
    else:
        replies = ask(port, meta.get("method", "GET"), f"/case/{name}")
        assert [r.status for r in replies] == [int(expect)]
        if "body" in meta:
            assert replies[0].body == meta["body"].encode()
        if int(expect) >= 500:
            assert b"SMUGGLED" not in replies[0].body
    if len(parts) > 1:
        script.release.set()
        assert script.rest_sent.wait(5)
    probe(port, name)


@pytest.mark.parametrize("kind", sorted(BIG))
def test_oversized_response_heads_are_refused(site, kind):
    port, _ = site
    assert [r.status for r in ask(port, "GET", f"/case/{kind}")] == [int(BIG[kind][1])]
    probe(port, kind)
