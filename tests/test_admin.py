"""The admin listener of a real master: its pages, its strictness, readiness through a drain."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler

from conftest import free_port, port_open, send_request, site_config, wait_for


def admin_exchange(port: int, request: bytes) -> tuple[int, dict, bytes]:
    reply = send_request(port, request)
    return reply.status, reply.headers, reply.body


def get(port: int, path: str) -> tuple[int, dict, bytes]:
    return admin_exchange(port, f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())


def config(port: int, admin: int, destination: str, extra: str = "") -> str:
    return site_config(port, {"/": destination}, f"""\
        workers: 2
        logging: {{access: off}}
        admin: {{port: {admin}}}
    """) + extra


def test_admin_pages(rex, upstream):
    up = upstream()
    port, admin = free_port(), free_port()
    path = rex.write(config(port, admin, up.url))
    rex.start(ports=(port, admin))
    assert get(admin, "/live")[0] == 200
    assert get(admin, "/ready")[:3:2] == (200, b"ready\n")
    status, headers, body = get(admin, "/status")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["pid"] == rex.pid and doc["state"] == "serving" and doc["ready"] is True
    assert doc["config"] == str(path)
    assert doc["config_digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [g["role"] for g in doc["generations"]] == ["serving"]
    assert {w["state"] for w in doc["workers"]} == {"ready"} and len(doc["workers"]) == 2
    assert doc["upstreams"][0]["key"] == up.url and doc["upstreams"][0]["up_in"] == 2
    assert doc["admin"] == f"http://127.0.0.1:{admin}/"
    # HEAD: the head only; other methods, unknown paths and broken requests: 4xx at once.
    status, headers, body = admin_exchange(admin, b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200 and int(headers["content-length"]) > 100 and body == b""
    assert admin_exchange(admin, b"POST /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n")[0] == 405
    status, _, body = get(admin, "/secret")
    assert status == 404 and b"/metrics" in body
    assert admin_exchange(admin, b"GET / HTTP/9\r\n\r\n")[0] == 400
    big = b"GET /status HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n"
    assert admin_exchange(admin, big)[0] == 431


def test_a_silent_admin_client_blocks_nobody(rex, upstream):
    up = upstream()
    port, admin = free_port(), free_port()
    rex.write(config(port, admin, up.url))
    rex.start(ports=(port, admin))
    silent = [socket.create_connection(("127.0.0.1", admin), timeout=5) for _ in range(3)]
    try:
        started = time.monotonic()
        assert get(admin, "/live")[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200  # and the master keeps supervising meanwhile
        assert time.monotonic() - started < 1.0
    finally:
        for s in silent:
            s.close()


def test_admin_listener_moves_on_reload_and_is_off_by_default(rex, upstream):
    up = upstream()
    port, admin, moved = free_port(), free_port(), free_port()
    rex.write(config(port, admin, up.url))
    rex.start(ports=(port, admin))
    rex.write(config(port, moved, up.url))
    rex.signal(signal.SIGHUP)
    wait_for(lambda: port_open(moved), what="the admin listener on its new port")
    assert not port_open(admin)
    wait_for(lambda: 'rex_reloads_total{result="ok"} 1\n' in get(moved, "/metrics")[2].decode(),
             what="the reload counted")
    rex.write(config(port, moved, up.url).replace(f"admin: {{port: {moved}}}\n", ""))
    rex.signal(signal.SIGHUP)
    wait_for(lambda: not port_open(moved), what="the admin listener closed")
    wait_for(lambda: rex.status()["admin"] is None, what="status without admin")


class Slow(BaseHTTPRequestHandler):
    """Holds each request until the test releases ``server.gate``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self.server.arrived.set()
        self.server.gate.wait(10)
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"done")


def test_ready_turns_503_while_draining_and_live_stays_200(rex, upstream):
    up = upstream(Slow)
    up.server.arrived, up.server.gate = threading.Event(), threading.Event()
    port, admin = free_port(), free_port()
    rex.write(config(port, admin, up.url))
    rex.start(ports=(port, admin))
    answers = []

    def request() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/slow", timeout=10) as resp:
            answers.append((resp.status, resp.read()))

    client = threading.Thread(target=request)
    client.start()
    try:
        assert up.server.arrived.wait(5)
        assert get(admin, "/ready")[0] == 200
        rex.signal(signal.SIGTERM)  # what Kubernetes sends when the pod is deleted
        _status, _, body = wait_for(lambda: (r := get(admin, "/ready"))[0] == 503 and r,
                                   what="/ready 503")
        assert body == b"not ready: stopping\n"
        assert get(admin, "/live")[0] == 200
        assert json.loads(get(admin, "/status")[2])["state"] == "stopping"
        assert not port_open(port)  # new connections go to other nodes
    finally:
        up.server.gate.set()
        client.join(10)
    assert answers == [(200, b"done")]  # the request in flight finished
    assert rex.proc.wait(10) == 0
