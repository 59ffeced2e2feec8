"""Slow and many clients: slowloris crowds, stalled bodies, readers that stop reading, 10,000 idle.

One master for the module with short timeouts (``header`` 1 s, ``read`` 1 s) and
one worker, so every figure is that worker's. What each test adds to the
single-connection timeout tests in ``test_proxy_keepalive``: the attack comes
in numbers while a normal client must still be served at once, and the
worker's memory and descriptors are read from /proc before and after.
The connection limit has its own master (``limits.connections: 4``).
"""

from __future__ import annotations

import os
import resource
import select
import socket
import threading
import time

import pytest
from conftest import free_port, read_reply, recv_head, rss_kb, send_request, wait_for

IDLE_CONNECTIONS = 10_000
MB = 1 << 20
RELEASE = threading.Event()  # set at teardown: frees upstreams still streaming


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def endless(sock: socket.socket) -> None:
    """Answers with a 1 GiB body as fast as the proxy takes it; records how it ended."""
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
    block = b"z" * (256 * 1024)
    try:
        while not RELEASE.is_set():
            sock.sendall(block)
    except OSError:
        ENDED.set()  # Rex hung up on us: what the slow reader test waits for


ENDED = threading.Event()


@pytest.fixture(scope="module")
def site(rex_module, upstream_module, tmp_path_factory):
    public = tmp_path_factory.mktemp("public")
    (public / "index.html").write_text("<p>hi</p>\n")
    api, api2 = upstream_module(), upstream_module()
    stream = upstream_module.raw(endless)
    port = rex_module.serve(f"""\
        - {{path: /api, destination: "{api.url}"}}
        - {{path: /endless, destination: "{stream.url}"}}
        - {{path: /pair, destination: ["{api.url}", "{api2.url}"]}}
    """, """\
        timeouts: {header: 1, read: 1, idle: 60}
        # The per-read timeouts alone: limits.min_rate has its own tests (test_buffering).
        limits: {min_rate: 0}
        logging: {access: off}
        workers: 1
    """, instance=f"public: {public}")
    yield port, rex_module.workers()[0], (api, api2)
    RELEASE.set()


def get(port: int, path: str = "/index.html", timeout: float = 5.0) -> tuple[int, float]:
    """(status, seconds) of one GET on a fresh connection."""
    started = time.monotonic()
    reply = send_request(port, b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                         % path.encode(), timeout=timeout)
    return reply.status, time.monotonic() - started


def test_slowloris_crowd_gets_408_while_others_are_served(site):
    port, _worker, _ = site
    head = b"GET /index.html HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 64
    crowd = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
    try:
        started = time.monotonic()
        answered: dict[socket.socket, bytes] = {}
        served = []
        # Trickle one byte to each connection in turn until every one has its answer.
        for i in range(len(head)):
            for s in crowd:
                if s not in answered:
                    try:
                        s.send(head[i:i + 1])
                    except OSError:
                        answered[s] = b""  # Rex hung up: the recv below reads why
            readable = select.select([s for s in crowd if s not in answered], [], [], 0.02)[0]
            for s in readable:
                answered[s] = s.recv(4096)
            if i % 10 == 0:
                served.append(get(port))
            if len(answered) == len(crowd) or time.monotonic() - started > 5:
                break
        took = time.monotonic() - started
    finally:
        for s in crowd:
            s.close()
    print(f"300 slowloris connections answered in {took:.2f}s; normal GETs: {served}")
    assert len(answered) == len(crowd) and took < 3
    assert all(data.startswith(b"HTTP/1.1 408 ") for data in answered.values())
    assert all(status == 200 and seconds < 0.5 for status, seconds in served)


def stalled_post(port: int, path: str) -> tuple[int, float]:
    """A POST whose body stops after 10 of 1,000 bytes: (status, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
                  % path.encode() + b"x" * 10)
        with s.makefile("rb") as f:
            status = read_reply(f).status
            assert f.read() == b""
        return status, time.monotonic() - started


# The upstream's read timer must not run while the client is still uploading: a
# stalled body is the client's fault (408) and must not count against the upstream,
# and a body that simply takes longer than ``timeouts.read`` to arrive must get through.


def test_stalled_request_body_is_408_and_the_upstream_hears_nothing_more(site):
    port, _, (api, _) = site
    before = len(api.requests)
    status, seconds = stalled_post(port, "/api/upload")
    assert len(api.requests) == before  # the short body never made a request upstream
    assert status == 408 and 0.9 < seconds < 3


def test_a_client_stalling_its_body_does_not_take_an_upstream_out_of_rotation(site):
    port, _, (api, api2) = site
    stalled_post(port, "/pair/upload")
    before = len(api.requests), len(api2.requests)
    for _ in range(4):
        assert get(port, "/pair/x")[0] == 200
    # Round robin over two healthy upstreams: each gets two of the four.
    assert (len(api.requests) - before[0], len(api2.requests) - before[1]) == (2, 2)


def test_slow_body_within_the_read_timeout_succeeds(site):
    port, _, (api, _) = site
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /api/trickle HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
        started = time.monotonic()
        for piece in (b"slow", b"-but", b"-ok!"):
            # Each gap is under timeouts.read (1 s): the timeout is per read, not per body.
            select.select([s], [], [], 0.4)
            s.sendall(piece)
        with s.makefile("rb") as f:
            reply = read_reply(f)
    assert reply.status == 200 and time.monotonic() - started > 1.0
    assert api.requests[-1]["body"] == "slow-but-ok!"


def test_slow_reader_is_dropped_and_memory_stays_flat(site):
    port, worker, _ = site
    ENDED.clear()
    base = rss_kb(worker)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        # Read nothing more: Rex's writes block, and after timeouts.read it gives up,
        # closing both sides; meanwhile other clients are served.
        assert get(port)[0] == 200
        assert ENDED.wait(5), "Rex kept the upstream streaming to a reader that stopped"
        peak = rss_kb(worker)
    finally:
        s.close()
    print(f"slow reader: worker RSS {base} -> {peak} KiB")
    assert peak - base < 8 * 1024


def test_ten_thousand_idle_keep_alive_connections(site):
    port, worker, _ = site
    needed = IDLE_CONNECTIONS + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}: cannot hold "
                    f"{IDLE_CONNECTIONS} connections (raise it with ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    fds_before, rss_before = open_fds(worker), rss_kb(worker)
    request = b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"
    conns: list[socket.socket] = []
    started = time.monotonic()
    try:
        while len(conns) < IDLE_CONNECTIONS:
            batch = [socket.create_connection(("127.0.0.1", port), timeout=10)
                     for _ in range(min(500, IDLE_CONNECTIONS - len(conns)))]
            conns += batch
            for s in batch:
                s.sendall(request)
            for s in batch:
                assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        opened = time.monotonic() - started
        # Each one was answered, so the worker accepted it; it must hold them all at
        # once. (Not fds_before + N: connections of earlier tests may still be
        # closing when fds_before is read, more so on a loaded machine.)
        wait_for(lambda: open_fds(worker) >= IDLE_CONNECTIONS,
                 what="the worker to hold every connection")
        status, seconds = get(port)
        rss_after = rss_kb(worker)
        # Every connection is still open and idle: nothing to read, no close.
        poller = select.poll()
        for s in conns:
            poller.register(s, select.POLLIN)
        assert poller.poll(0) == []
    finally:
        for s in conns:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    per_conn = (rss_after - rss_before) * 1024 / IDLE_CONNECTIONS
    print(f"{IDLE_CONNECTIONS} idle connections opened in {opened:.1f}s; worker RSS "
          f"{rss_before} -> {rss_after} KiB ({per_conn:.0f} B each); a new GET took "
          f"{seconds * 1000:.1f} ms")
    assert status == 200 and seconds < 0.5
    assert per_conn < 16 * 1024
    wait_for(lambda: open_fds(worker) <= fds_before + 2, timeout=10,
             what="the worker's descriptors back to where they were")


def test_connection_limit_queues_new_clients_and_keeps_old_ones(rex, tmp_path):
    public = tmp_path / "public"
    public.mkdir()
    (public / "index.html").write_text("hi\n")
    port = free_port()
    rex.write(f"""\
        server:
          instances:
            - {{port: {port}, host: 127.0.0.1, public: {public}}}
        limits: {{connections: 4}}
        timeouts: {{idle: 30}}
        logging: {{access: off}}
        workers: 1
    """)
    rex.start(ports=(port,))
    request = b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    files = [s.makefile("rb") for s in held]
    late = None
    try:
        for s, f in zip(held, files, strict=True):
            s.sendall(request)
            assert read_reply(f).status == 200
        # The fifth client waits in the listen queue (connected, not yet accepted).
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
        late.sendall(request)
        assert select.select([late], [], [], 0.5)[0] == []
        for s, f in zip(held, files, strict=True):  # the old ones keep working
            s.sendall(request)
            assert read_reply(f).status == 200
        started = time.monotonic()
        files.pop().close()  # a slot frees: the queued client is served at once
        held.pop().close()
        with late.makefile("rb") as f:
            assert read_reply(f).status == 200
        assert time.monotonic() - started < 1.0
    finally:
        for item in [*files, *held, late]:
            if item is not None:
                item.close()
