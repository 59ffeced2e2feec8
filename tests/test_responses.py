"""Every responder answers through the connection: slow readers are cut, drains are announced.

One master for the module, one worker, ``timeouts.read: 1``: a static site, a
proxied route and a WSGI app side by side. What the connection owns for all of
them (issue 14): the write timeout on every write, sendfile included (a
client that stops reading a 64 MiB static file or a WSGI ``file_wrapper``
response is cut within ``read`` + 1 s while the worker serves others), and
keep-alive while draining (the response after the drain began says
``Connection: close`` and the connection closes after it, whichever responder
made it).
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    Upstream,
    connection_owner,
    read_reply,
    send_request,
    wait_for,
)

APPS = ROOT / "tests" / "apps"
BIG = 64 << 20
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def site(rex_module, tmp_path_factory):
    public = tmp_path_factory.mktemp("public")
    (public / "index.html").write_text("<p>hi</p>\n")
    with open(public / "big.bin", "wb") as f:
        f.truncate(BIG)  # sparse: 64 MiB of zeros without writing them
    api = Upstream()
    port = rex_module.serve(f"""\
        - {{path: /api, destination: "{api.url}"}}
        - {{path: /raw, destination: "wsgi:rawapps:app"}}
    """, f"""\
        timeouts: {{header: 2, read: {READ_TIMEOUT:g}, idle: 60}}
        logging: {{access: off}}
        graceful_timeout: 10
        workers: 1
        pythonpath: ["{APPS}"]
    """, instance=f"public: {public}")
    yield rex_module, port, public
    api.close()


def get_ok(port: int) -> float:
    """Seconds one fresh GET of the small page took; it must succeed."""
    started = time.monotonic()
    reply = send_request(port, b"GET /index.html HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                         timeout=5)
    assert reply.status == 200
    return time.monotonic() - started


@pytest.mark.parametrize("path", ["/big.bin", "/raw/file?{public}/big.bin"],
                         ids=["static", "wsgi-file-wrapper"])
def test_a_reader_that_stops_is_cut_after_the_read_timeout(site, path):
    rex, port, public = site
    worker = rex.workers()[0]
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        # Default buffers: the kernel holds a few MiB of the file in flight at most
        # (tcp_rmem + tcp_wmem), far from 64 MiB, and reading them back is quick.
        target = path.format(public=public).encode()
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        stalled = time.monotonic()  # from now on this client reads nothing
        client_port = s.getsockname()[1]
        assert get_ok(port) < 1.0  # the worker serves others meanwhile
        wait_for(lambda: connection_owner(port, client_port, [worker]) is None,
                 timeout=READ_TIMEOUT + 3, interval=0.05, what="Rex to drop the stalled reader")
        cut_after = time.monotonic() - stalled
        # Resuming, the client gets what was in flight, then the end: never the whole file.
        received = 0
        try:
            while data := s.recv(1 << 20):
                received += len(data)
        except ConnectionResetError:
            pass  # the kernel may reset a closed socket with unread data: cut all the same
    finally:
        s.close()
    assert cut_after <= READ_TIMEOUT + 1.0, f"cut after {cut_after:.2f}s"
    assert received < BIG
    assert get_ok(port) < 1.0


def worker_draining(pid: int) -> bool:
    try:
        return "draining" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False  # already exited


@pytest.mark.parametrize(("path", "status"), [
    ("/index.html", 200),  # a static file
    ("/api/x", 200),  # proxied
    ("/raw/environ", 200),  # WSGI
    ("/nowhere", 404),  # an error page
], ids=["static", "proxy", "wsgi", "error-page"])
def test_a_draining_worker_closes_keep_alive_connections_after_the_next_response(site, path,
                                                                                 status):
    rex, port, _public = site
    old = rex.workers()[0]
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    try:
        # Busy while the drain starts: a WSGI view that takes two seconds.
        s.sendall(b"GET /raw/sleep?2 HTTP/1.1\r\nHost: a\r\n\r\n")
        rex.signal(signal.SIGHUP)  # a reload: a new generation, then the old one drains
        wait_for(lambda: worker_draining(old), timeout=10, what="the old worker to drain")
        assert read_reply(f).status == 200  # in flight when the drain began: finished
        # The next request on the same connection is answered, and closes it.
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        reply = read_reply(f)
        assert reply.status == status
        assert reply.headers.get("connection") == "close"
        assert f.read() == b""  # and the connection ends there
    finally:
        f.close()
        s.close()
    wait_for(lambda: rex.workers() and old not in rex.workers(), timeout=15,
             what="the old worker to exit")
