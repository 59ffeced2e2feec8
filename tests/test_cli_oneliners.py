"""rex proxy / serve / wsgi: one-liners run as real masters, reached over real sockets."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest
from conftest import LoadLoop, alive, free_port, port_open, wait_for

from rex_workers.cli import CommandError, oneliners


def fetch(url: str) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, dict(resp.headers), resp.read()


def master_status(rex) -> dict:
    status = json.loads(rex.cli("status", "--json").stdout)["masters"]
    return next(m for m in status if m["pid"] == rex.pid)


def test_proxy_balances_reloads_shows_in_status_and_stops(rex, upstream):
    first, second = upstream(), upstream()
    port = free_port()
    rex.launch("proxy", "--from", f"127.0.0.1:{port}",
               "--to", f"127.0.0.1:{first.port}", "--to", f"http://127.0.0.1:{second.port}")
    out = rex.output()
    assert f"rex proxy: http://127.0.0.1:{port}/ -> 127.0.0.1:{first.port}, " in out
    for n in range(4):
        assert fetch(f"http://127.0.0.1:{port}/api/{n}?q=1")[0] == 200
    assert len(first.requests) == len(second.requests) == 2  # round robin over both
    assert first.requests[0]["path"] == "/api/0?q=1"
    master = master_status(rex)
    config = Path(master["config"])
    assert config == rex.home / "run" / f"{rex.pid}.proxy.yaml" and config.exists()
    assert master["urls"] == [f"http://127.0.0.1:{port}/"] and master["state"] == "serving"
    # A reload re-reads the written file: a new generation, same behaviour.
    assert rex.cli("reload", "-p", str(rex.pid)).returncode == 0
    wait_for(lambda: master_status(rex)["generation"] == 2 and
             master_status(rex)["state"] == "serving", what="generation 2")
    assert fetch(f"http://127.0.0.1:{port}/after")[0] == 200
    stopped = rex.cli("stop", "-p", str(rex.pid))
    assert stopped.returncode == 0, stopped.stderr
    assert rex.proc.wait(10) == 0 and not port_open(port)
    assert not config.exists()  # the one-liner's file goes with its master


def test_serve_a_directory_with_listings_until_sigterm(rex):
    site = rex.workdir / "site"
    (site / "docs").mkdir(parents=True)
    (site / "hello.txt").write_text("hello\n")
    (site / "docs" / "a.txt").write_text("a\n")
    port = free_port()
    rex.launch("serve", "site", "--listen", f"127.0.0.1:{port}", "--browse", "-w", "2")
    assert f"rex serve: {site} at http://127.0.0.1:{port}/ (directory listings on)" \
        in rex.output()
    status, headers, body = fetch(f"http://127.0.0.1:{port}/hello.txt")
    assert (status, body) == (200, b"hello\n") and headers["ETag"]
    listing = fetch(f"http://127.0.0.1:{port}/docs/")[2]
    assert b"Index of /docs/" in listing and b'href="a.txt"' in listing
    assert len(master_status(rex)["workers"]) == 2
    os.kill(rex.pid, signal.SIGTERM)
    assert rex.proc.wait(10) == 0
    assert not list((rex.home / "run").iterdir())


APP = """\
import os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"VERSION pid=%d" % os.getpid()]
"""


def test_wsgi_reload_on_an_edit_without_a_failed_request(rex):
    (rex.workdir / "live_app.py").write_text(APP.replace("VERSION", "one"))
    (rex.workdir / "assets").mkdir()
    (rex.workdir / "assets" / "site.css").write_text("body{}\n")
    port = free_port()
    as_root = ("--user", "root") if os.geteuid() == 0 else ()  # docs/limits.md
    rex.launch("wsgi", "live_app:app", "--bind", f"127.0.0.1:{port}", "--reload",
               "--static", "/static=assets", *as_root)
    url = f"http://127.0.0.1:{port}/"
    assert fetch(url)[2].startswith(b"one ")
    assert fetch(url + "static/site.css")[2] == b"body{}\n"
    load = LoadLoop(port).start()
    try:
        load.wait_for(20)
        (rex.workdir / "live_app.py").write_text(APP.replace("VERSION", "two"))
        wait_for(lambda: fetch(url)[2].startswith(b"two "), timeout=15, what="the edited app")
        load.wait_for(20)
    finally:
        load.stop()
    assert load.failures == [], load.failures
    assert "reload watcher: live_app.py changed: reloading" in rex.output()
    # New workers accept beside the old ones before the switch is logged.
    wait_for(lambda: "generation 2 is serving" in rex.output(), what="the switch")
    # An edit that does not import leaves the running code serving.
    (rex.workdir / "live_app.py").write_text("import nowhere_to_be_found\n")
    wait_for(lambda: master_status(rex)["reloads"]["failed"] == 1, timeout=15,
             what="the broken edit to be refused")
    assert fetch(url)[2].startswith(b"two ")
    watcher = [p for p in rex.workers() if "reload watcher" in Path(f"/proc/{p}/cmdline")
               .read_text(errors="replace")]
    assert len(watcher) == 1
    os.kill(rex.pid, signal.SIGTERM)
    assert rex.proc.wait(10) == 0
    wait_for(lambda: not alive(watcher[0]), what="the watcher to follow its master out")


def test_arguments_are_checked_and_named(rex):
    cases = [
        (("proxy", "--from", "nope", "--to", "x"),
         "rex: --from expects :PORT, HOST:PORT or [IPv6]:PORT (port 1-65535), not 'nope'"),
        (("proxy", "--from", ":8080", "--to", "localhost:99999"),
         "rex: --to: invalid port in localhost:99999 (must be 1-65535)"),
        (("serve", "missing-dir"), f"rex: DIR: public directory not found: "
                                   f"{rex.workdir / 'missing-dir'}"),
        (("wsgi", "app:app", "--static", "static"),
         "rex: --static expects /PREFIX=DIR (like /static=./static), not 'static'"),
        (("wsgi", "app", "--bind", "[::1]:8000"),
         "rex: app: invalid WSGI target 'wsgi:app' (expected wsgi:package.module:app or "
         "wsgi:module:factory())"),
    ]
    for args, message in cases:
        result = rex.cli(*args)
        assert (result.returncode, result.stderr.strip()) == (2, message), args
    assert not list((rex.home / "run").iterdir())  # nothing written is left behind


@pytest.mark.parametrize(("text", "expected"), [
    (":8080", (None, 8080)),  # every interface: the config's default host
    ("8080", (None, 8080)),
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("localhost:1", ("localhost", 1)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:65535", ("::", 65535)),
])
def test_listen_addresses(text: str, expected: tuple) -> None:
    assert oneliners.parse_address(text, "--from") == expected


@pytest.mark.parametrize("text", ["", ":", ":0", ":65536", "host:", "::1:8080", "[::1]",
                                  "[::1]8080", "a:b", "1.2.3.4:80:90"])
def test_listen_addresses_refused(text: str) -> None:
    with pytest.raises(CommandError) as caught:
        oneliners.parse_address(text, "--bind")
    assert caught.value.code == 2 and str(caught.value).startswith("--bind expects ")
