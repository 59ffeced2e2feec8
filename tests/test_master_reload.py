"""Reloads with real masters: SIGHUP, file edits, `rex reload`/`load`, bad configs, moved ports.

Load runs in threads over keep-alive connections while generations change;
every request is counted and none may fail (see ``LoadLoop`` for what a
reconnect is and why it is counted apart).
"""

from __future__ import annotations

import json
import signal
import socket

from conftest import (
    LoadLoop,
    RawUpstream,
    alive,
    free_port,
    port_open,
    recv_head,
    site_config,
    wait_for,
)
from test_master import BROKEN_APP, fetch_in_thread, get, pool, slow_upstream


def serving(rex, generation: int, size: int) -> bool:
    """Generation ``generation`` serves with ``size`` ready workers and nothing else runs."""
    try:
        status = rex.status()
    except (OSError, ValueError):
        return False
    workers = status["workers"]
    return (status["generation"] == generation and len(workers) == size
            and all(w["generation"] == generation and w["state"] == "ready" for w in workers))


def test_sighup_under_load_fails_no_request(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 2\n")
    load = LoadLoop(port, threads=4).start()
    try:
        load.wait_for(50)
        for generation in (2, 3, 4):
            rex.signal(signal.SIGHUP)
            wait_for(lambda g=generation: serving(rex, g, 2), timeout=15,
                     what=f"generation {generation} alone")
            load.wait_for(50)
    finally:
        load.stop()
    print(f"{load.ok} requests over 3 reloads; reconnects: {load.reconnects}")
    assert load.failures == []
    assert load.reconnects == []  # busy clients get `Connection: close`, never a reset


def test_editing_the_config_file_reloads_it_under_load(rex, upstream):
    before, after = upstream(), upstream()
    port = rex.serve({"/": before.url}, "workers: 2\n")
    load = LoadLoop(port, "/edited", threads=4).start()
    try:
        load.wait_for(50)
        rex.write(site_config(port, {"/": after.url}, "workers: 2\n"))  # in place, like an editor
        wait_for(lambda: serving(rex, 2, 2), timeout=15, what="the edited config serving")
        served_before = len(before.requests)
        load.wait_for(50)
    finally:
        load.stop()
    print(f"{load.ok} requests; reconnects: {load.reconnects}")
    assert load.failures == [] and load.reconnects == []
    assert len(before.requests) == served_before  # the old generation is gone
    assert len(after.requests) >= 50
    assert "reload (config file changed): starting generation 2" in rex.output()


def test_a_bad_edit_keeps_the_old_config_and_logs_the_exact_error(rex, upstream):
    up = upstream()
    port = free_port()
    good = site_config(port, {"/": up.url}, "workers: 2\n")
    rex.write(good)
    rex.start(ports=(port,))
    rex.write(good.replace("workers: 2", "workers: 0\nrootes: []"))
    said = rex.cli("check", str(rex.config)).stderr.strip().splitlines()
    assert len(said) == 2 and all(line.startswith(f"rex: {rex.config}:") for line in said)
    expected = [line.removeprefix("rex: ") for line in said]  # the log has no CLI prefix
    wait_for(lambda: rex.status()["reloads"]["failed"] == 1, what="the reload to fail")
    output = rex.output()
    assert "reload (config file changed) failed; still serving generation 1:" in output
    for line in expected:
        assert line in output.splitlines()
    assert rex.status()["reloads"]["last_error"] == "\n".join(expected)
    assert serving(rex, 1, 2)
    assert get(f"http://127.0.0.1:{port}/still")[0] == 200
    rex.write(good.replace("workers: 2", "workers: 1"))  # fixed: this one applies
    wait_for(lambda: serving(rex, 2, 1), timeout=15, what="the fixed config serving")


def test_a_reload_that_cannot_bind_keeps_serving_and_says_why(rex, upstream):
    up = upstream()
    port = rex.serve({"/": up.url}, "workers: 1\n")
    rex.write(site_config(port, {"/": up.url}, "workers: 1\n").replace("127.0.0.1", "0.0.0.0"))
    rex.signal(signal.SIGHUP)  # the file watcher may try it too: both fail the same way
    wait_for(lambda: rex.status()["reloads"]["failed"] >= 1, what="the failed reload")
    assert rex.status()["reloads"]["last_error"] == (
        f"port {port} is already in use (instance 0): this master listens on it with another "
        "host, and changing an instance's host needs a restart")
    assert get(f"http://127.0.0.1:{port}/")[0] == 200 and serving(rex, 1, 1)


def test_reload_onto_workers_that_cannot_boot_keeps_the_old_generation(rex, upstream):
    up = upstream()
    port = free_port()
    (rex.workdir / "broken_app.py").write_text(BROKEN_APP)
    rex.write(site_config(port, {"/": up.url}, "workers: 2\n"))
    rex.start(ports=(port,))
    broken = site_config(port, {"/": up.url}, "workers: 2\n").replace(
        "      routes:\n",
        "      routes:\n        - path: /app\n          destination: wsgi:broken_app:app\n")
    rex.write(broken)
    wait_for(lambda: "reload failed; still serving generation 1: " in rex.output(),
             timeout=15, what="the failed reload")
    assert "RuntimeError: DATABASE_URL is not set" in rex.output()
    wait_for(lambda: serving(rex, 1, 2), what="generation 1 alone")
    assert get(f"http://127.0.0.1:{port}/app")[0] == 200  # the old routes still answer


def test_reload_moves_a_listener_and_closes_the_old_one_after_its_workers(rex, upstream):
    up = slow_upstream(upstream)
    old, new = free_port(), free_port()
    rex.write(site_config(old, {"/": up.url}, "workers: 1\n"))
    rex.start(ports=(old,))
    slow = fetch_in_thread(f"http://127.0.0.1:{old}/slow?s=1.5")
    assert up.server.arrived.wait(10)
    rex.write(site_config(new, {"/": up.url}, "workers: 1\n"))
    rex.signal(signal.SIGHUP)
    wait_for(lambda: port_open(new), what="the new port")
    assert get(f"http://127.0.0.1:{new}/fast")[0] == 200
    assert "reply" not in slow and port_open(old)  # its worker still drains
    wait_for(lambda: "reply" in slow or "error" in slow, what="the slow reply")
    assert slow.get("reply", slow.get("error"))[0] == 200
    wait_for(lambda: not port_open(old), what="the removed port closed")
    wait_for(lambda: serving(rex, 2, 1), what="generation 2 alone")


def tunnel_echo(sock: socket.socket) -> None:
    """An upstream that accepts any Upgrade, then echoes raw bytes (the tunnel is opaque)."""
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\n\r\n")
    while data := sock.recv(65536):
        sock.sendall(data)


def test_an_open_websocket_outlives_a_reload_on_its_draining_worker(rex):
    echo = RawUpstream(tunnel_echo)
    try:
        port = rex.serve({"/": echo.url}, "workers: 1\n")
        old = wait_for(lambda: pool(rex, 1), what="a worker")[0]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"GET /hmr HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                       b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert recv_head(client).startswith(b"HTTP/1.1 101 ")
        rex.signal(signal.SIGHUP)
        wait_for(lambda: any(w["generation"] == 2 and w["state"] == "ready"
                             for w in rex.status()["workers"]), what="generation 2")
        client.sendall(b"still here")
        assert client.recv(100) == b"still here"
        states = {w["pid"]: w["state"] for w in rex.status()["workers"]}
        assert states[old] == "draining" and alive(old)
        client.close()
        wait_for(lambda: not alive(old), what="the old worker leaving with its last tunnel")
    finally:
        echo.close()


def test_rex_load_reload_and_reset_reach_a_running_master(rex, upstream, daemons):
    first, second = upstream(), upstream()
    port = free_port()
    rex.write(site_config(port, {"/": first.url}, "workers: 1\n"))
    started = rex.cli("start")  # no -c: follows the active config (./rex.config.yaml now)
    assert started.returncode == 0, started.stderr
    pid = daemons.running()[0]
    status_file = rex.home / "run" / f"{pid}.status"

    def generation() -> int:
        return json.loads(status_file.read_text())["generation"]

    other = rex.workdir / "other.yaml"
    other.write_text(site_config(port, {"/": second.url}, "workers: 1\n"))
    loaded = rex.cli("load", str(other))
    assert loaded.returncode == 0 and f"reloading master {pid}" in loaded.stdout
    wait_for(lambda: generation() == 2, what="the loaded config")
    wait_for(lambda: get(f"http://127.0.0.1:{port}/x")[0] == 200 and second.requests,
             what="the second upstream answering")
    reloaded = rex.cli("reload", "-p", str(pid))
    assert reloaded.returncode == 0, reloaded.stderr
    wait_for(lambda: generation() == 3, what="`rex reload`")
    assert rex.cli("reset").returncode == 0
    wait_for(lambda: generation() == 4, what="the reset config")
    count = len(first.requests)
    wait_for(lambda: get(f"http://127.0.0.1:{port}/y")[0] == 200 and len(first.requests) > count,
             what="the first upstream answering again")
    assert rex.cli("stop").returncode == 0
    assert daemons.running() == []
