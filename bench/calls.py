"""Python calls per request in one in-process Rex worker: a figure that does not swing.

Throughput on a shared 2-core box moves 2x between days; the number of Python
function calls a request costs does not. This module builds a real worker in
this process (config file, ``Runtime``, gevent ``StreamServer`` on 127.0.0.1),
drives it from a client in a child process (plain blocking sockets, so none of
the client's calls are counted), and counts every Python call made in this
process while the child sends ``count`` keep-alive requests one after another.
The proxied scenarios go to a small upstream in a second child process; the
bare relay (``bench/relay.py``), in this process too, shows the floor.

The count includes what the worker's hub and greenlets do for the request and
nothing else: the profile runs only between the child's "go" and its "done".
It is printed by ``bench/run.py`` and held to a budget by
``tests/test_call_budget.py``. Run it alone: ``python -m bench.calls``.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Scenario:
    name: str
    site: str  # "proxy", "static", "wsgi", "relay", or "h2" (both, h2c)
    path: str
    size: int
    http2: bool = False  # the client speaks HTTP/2 (prior knowledge), one stream at a time


SCENARIOS = (
    Scenario("proxied 13 B", "proxy", "/13b.bin", 13),
    Scenario("static 1 KiB", "static", "/1k.bin", 1024),
    Scenario("proxied 64 KiB", "proxy", "/64k.bin", 64 * 1024),
    # A WSGI hello (bench/wsgi_hello.py) from a ``wsgi:`` route, in-process.
    Scenario("WSGI hello 13 B", "wsgi", "/", 13),
    # The floor: the same request through the bare relay (``bench/relay.py``).
    Scenario("bare relay 13 B", "relay", "/13b.bin", 13),
    # HTTP/2 (h2c with prior knowledge) to an instance with both a static root and a
    # route: what a stream costs on top of the request it carries.
    Scenario("h2 static 1 KiB", "h2", "/1k.bin", 1024, True),
    Scenario("h2 proxied 13 B", "h2", "/api/13b.bin", 13, True),
)

# The client: connects, says it is ready, waits for "go", sends the requests one
# at a time on one keep-alive connection (reading each whole response), says "done".
_CLIENT = r"""
import socket, sys
port, path, count, size = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
c = socket.create_connection(("127.0.0.1", port))
req = b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path
def one():
    c.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    while len(body) < size:
        body += c.recv(65536)
for _ in range(20):
    one()  # warm: the pool holds its upstream connection, caches are filled
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
for _ in range(count):
    one()
sys.stdout.write("done\n"); sys.stdout.flush()
"""

# The same client in HTTP/2 (h2c, prior knowledge): one stream at a time on one connection.
_H2_CLIENT = r"""
import socket, sys
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
port, path, count, size = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
c = socket.create_connection(("127.0.0.1", port))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
h = H2Connection(H2Configuration(client_side=True, header_encoding=None))
h.initiate_connection()
c.sendall(h.data_to_send())
fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"bench"),
          (b":path", path)]
def one():
    sid = h.get_next_available_stream_id()
    h.send_headers(sid, fields, end_stream=True)
    c.sendall(h.data_to_send())
    got, ended = 0, False
    while not ended:
        for ev in h.receive_data(c.recv(65536)):
            if isinstance(ev, ResponseReceived):
                assert dict(ev.headers)[b":status"] == b"200", ev.headers
            elif isinstance(ev, DataReceived):
                got += len(ev.data)
                h.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                ended = True
        out = h.data_to_send()
        if out:
            c.sendall(out)
    assert got == size, got
for _ in range(20):
    one()
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
for _ in range(count):
    one()
sys.stdout.write("done\n"); sys.stdout.flush()
"""

# The upstream: one thread per connection, keep-alive, a fixed body per path, with
# the head nginx (the bench's backend) sends for a static file.
_UPSTREAM = r"""
import socket, sys, threading
bodies = {b"/13b.bin": b"x" * 13, b"/64k.bin": b"z" * 65536}
HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 06:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
        b"Last-Modified: Sun, 06 Dec 2026 05:00:00 GMT\r\nConnection: keep-alive\r\n"
        b'ETag: "6933b6b0-d"\r\nAccept-Ranges: bytes\r\n\r\n')
srv = socket.create_server(("127.0.0.1", 0))
sys.stdout.write("%d\n" % srv.getsockname()[1]); sys.stdout.flush()
def serve(c):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            got = c.recv(65536)
            if not got:
                return
            buf += got
        head, _, buf = buf.partition(b"\r\n\r\n")
        body = bodies.get(head.split(b" ", 2)[1], b"")
        c.sendall(HEAD % len(body) + body)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def _files(www: str) -> None:
    os.makedirs(www)
    for name, size in (("13b.bin", 13), ("1k.bin", 1024), ("64k.bin", 64 * 1024)):
        with open(os.path.join(www, name), "wb") as f:
            f.write(b"y" * size)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A Rex worker in this process: a proxy, a static and a WSGI instance."""

    def __init__(self, workdir: str, upstream_port: int) -> None:
        from gevent.server import StreamServer

        from rex_workers.config.loader import load_config
        from rex_workers.config.routing import listeners
        from rex_workers.serve.accept import Entry
        from rex_workers.serve.runtime import Runtime

        www = os.path.join(workdir, "www")
        _files(www)
        from bench import relay

        self.ports = {"proxy": _free_port(), "static": _free_port(), "wsgi": _free_port(),
                      "relay": _free_port(), "h2": _free_port()}
        path = os.path.join(workdir, "rex.yaml")
        with open(path, "w") as f:
            f.write(f"""\
server:
  instances:
    - {{host: 127.0.0.1, port: {self.ports["proxy"]},
       routes: [{{path: /, destination: "http://127.0.0.1:{upstream_port}"}}]}}
    - {{host: 127.0.0.1, port: {self.ports["static"]}, public: "{www}"}}
    - {{host: 127.0.0.1, port: {self.ports["wsgi"]},
       routes: [{{path: /, destination: "wsgi:bench.wsgi_hello:app"}}]}}
    - {{host: 127.0.0.1, port: {self.ports["h2"]}, public: "{www}", http2: cleartext,
       routes: [{{path: /api, destination: "http://127.0.0.1:{upstream_port}",
                  strip_prefix: true}}]}}
pythonpath: ["{REPO}"]
logging: {{access: off}}
workers: 1
""")
        config = load_config(path)
        vhosts = listeners(config)
        rt = Runtime(config, vhosts)
        self.servers = [StreamServer(addr, Entry(rt.listeners[addr], rt, None))
                        for addr in vhosts]
        for server in self.servers:
            server.start()
        self.servers.append(relay.serve(self.ports["relay"], upstream_port))

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _count(worker: Worker, scenario: Scenario, count: int) -> float:
    """Python calls made in this process per request of ``scenario``."""
    from gevent import subprocess as gsub

    code = _H2_CLIENT if scenario.http2 else _CLIENT
    client = gsub.Popen([sys.executable, "-c", code, str(worker.ports[scenario.site]),
                         scenario.path, str(count), str(scenario.size)],
                        stdin=gsub.PIPE, stdout=gsub.PIPE, text=True)
    try:
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{scenario.name}: the client did not get its warm-up answers")
        profile = cProfile.Profile()
        profile.enable()
        client.stdin.write("go\n")
        client.stdin.flush()
        done = client.stdout.readline().strip()
        profile.disable()
        if done != "done":
            raise RuntimeError(f"{scenario.name}: the client failed")
    finally:
        client.kill()
        client.wait()
    return pstats.Stats(profile).total_calls / count


def measure(count: int = 2000, scenarios: tuple[Scenario, ...] = SCENARIOS) -> dict[str, float]:
    """{scenario name: Python calls per request}, all in this process (gevent-patched
    sockets are not needed: the worker uses gevent's own)."""
    upstream = subprocess.Popen([sys.executable, "-c", _UPSTREAM], stdout=subprocess.PIPE,
                                text=True)
    try:
        port = int(upstream.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="rex-calls-") as workdir:
            worker = Worker(workdir, port)
            try:
                return {s.name: _count(worker, s, count) for s in scenarios}
            finally:
                worker.stop()
    finally:
        upstream.kill()
        upstream.wait()


def main(argv: list[str]) -> int:
    """``python -m bench.calls [--json] [--count N]``: the table, or the figures as JSON."""
    count = int(argv[argv.index("--count") + 1]) if "--count" in argv else 2000
    figures = measure(count)
    if "--json" in argv:
        print(json.dumps(figures))
        return 0
    for name, calls in figures.items():
        print(f"{name:<16} {calls:6.1f} Python calls per request")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
