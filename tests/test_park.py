"""serve/park.py: an idle keep-alive connection gives up its greenlet and comes back.

In this process: a real ``ClientConn`` on one end of a socket pair, served in a
gevent ``Pool`` with a ``Lot``, as the worker does; the other end is the client.
What a parked connection must keep: its next request answered, its idle
deadline, its pool slot, and a stop that closes it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time

import gevent
import gevent.socket
import pytest
from gevent.pool import Pool
from inproc import runtime

from rex_workers.http.message import Response
from rex_workers.http.urlpath import normalize
from rex_workers.serve.conn import ClientConn
from rex_workers.serve.park import PARK_AFTER, Lot

REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


class Hello:
    port, scheme = 8080, "http"

    def respond(self, stream) -> None:
        stream.request.path = normalize(stream.request.raw_path)
        stream.respond(Response(200, [(b"content-type", b"text/plain")], b"hi", length=2))


def answer(client) -> bytes:
    """One whole response (2-byte body) read by the client."""
    client.settimeout(5)
    data = b""
    while not data.endswith(b"\r\n\r\nhi"):
        got = client.recv(65536)
        assert got, data
        data += got
    return data


def wait_until(predicate, timeout: float = 5.0) -> None:
    ends = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < ends, "condition not reached"
        gevent.sleep(0.01)


@pytest.fixture
def parked():
    """(ctx, pool, lot, conn, client) with one request served and the connection parked."""
    ctx = runtime()
    ctx.access = lambda *args: None
    ctx.timeouts = dataclasses.replace(ctx.timeouts, idle=PARK_AFTER + 1.5)
    pool = Pool(4)
    ctx.lot = lot = Lot(pool, gevent.get_hub().loop)
    server, client = gevent.socket.socketpair()
    conn = ClientConn(server, ("10.0.0.7", 5555), Hello(), ctx)
    ctx.connections.add(conn)
    pool.spawn(conn.serve)
    client.sendall(REQUEST)
    assert answer(client).startswith(b"HTTP/1.1 200 ")
    wait_until(lambda: server in lot.tickets)
    try:
        yield ctx, pool, lot, conn, client
    finally:
        pool.kill()
        client.close()


def test_a_parked_connection_holds_no_greenlet_but_its_pool_slot(parked):
    ctx, pool, _lot, conn, _client = parked
    assert [type(g).__name__ for g in pool.greenlets] == ["Ticket"]
    assert pool.free_count() == 3 and ctx.open_connections == 1 and conn in ctx.connections
    assert conn.idle and conn.reader is None


def test_a_parked_connection_serves_its_next_request_and_parks_again(parked):
    ctx, pool, lot, conn, client = parked
    client.sendall(REQUEST)
    assert answer(client).startswith(b"HTTP/1.1 200 ")
    assert conn.served == 2
    wait_until(lambda: conn.sock in lot.tickets)
    assert len(pool) == 1 and ctx.open_connections == 1


def test_a_parked_connection_closes_at_its_idle_deadline(parked):
    ctx, pool, lot, conn, client = parked
    started = time.monotonic()
    client.settimeout(5)
    assert client.recv(1) == b""  # closed by Rex, not by the test's timeout
    # Idle since the response (about PARK_AFTER ago): the deadline counts from then.
    assert 1.0 < time.monotonic() - started < 2.5
    wait_until(lambda: len(pool) == 0)
    assert ctx.open_connections == 0 and conn not in ctx.connections and not lot.tickets


def test_a_client_that_closes_while_parked_frees_everything(parked):
    ctx, pool, lot, _conn, client = parked
    client.shutdown(socket.SHUT_WR)
    wait_until(lambda: len(pool) == 0)
    assert ctx.open_connections == 0 and not lot.tickets


def test_killing_the_pool_closes_parked_connections(parked):
    ctx, pool, lot, _conn, client = parked
    pool.kill(block=False)  # what the worker's stop_now does
    client.settimeout(5)
    assert client.recv(1) == b""
    assert len(pool) == 0 and ctx.open_connections == 0 and not lot.tickets


def test_no_park_without_a_spare_pool_slot(parked):
    _ctx, pool, lot, conn, client = parked
    others = [pool.spawn(gevent.sleep, 30) for _ in range(3)]  # the pool is full now
    client.sendall(REQUEST)
    assert answer(client).startswith(b"HTTP/1.1 200 ")
    gevent.sleep(PARK_AFTER + 0.3)
    assert not lot.tickets and conn.idle  # waits in its greenlet, as before parking
    client.sendall(REQUEST)
    assert answer(client).startswith(b"HTTP/1.1 200 ")
    gevent.killall(others)


def test_a_worker_stops_gracefully_with_parked_connections(rex, upstream):
    """A real worker: parked connections still answer, and a drain closes them at once."""
    from conftest import read_reply

    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 1\ntimeouts: {idle: 30}\ngraceful_timeout: 20\n")
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    files = [c.makefile("rb") for c in clients]
    try:
        for c, f in zip(clients, files, strict=True):
            c.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_reply(f).status == 200
        time.sleep(PARK_AFTER + 0.5)  # the idle time parking waits for: no event to wait on
        clients[0].sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # woken from its ticket
        assert read_reply(files[0]).status == 200
        time.sleep(PARK_AFTER + 0.5)
        asked = time.monotonic()
        os.kill(rex.pid, signal.SIGTERM)
        assert rex.proc.wait(15) == 0
        assert time.monotonic() - asked < 5  # not graceful_timeout: idle ones were closed
        for f in files:
            assert f.read() == b""
    finally:
        for f, c in zip(files, clients, strict=True):
            f.close()
            c.close()
