"""Basic auth through a real master and worker: the challenge, the credential kept from the
upstream, every responder guarded, routes opting out, the credential cache, bcrypt off
the event loop, and the per-client bound on failed checks.

Hashes come from the bcrypt package at its lowest cost (4) unless a test needs the
check to take a measurable time; they are written ``$2y$`` as ``htpasswd -B`` writes them.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from pathlib import Path

import bcrypt
import pytest
from conftest import Rex, Upstream, read_reply, send_request, wait_for

APPS = Path(__file__).parent / "apps"


def htpasswd_hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$")


def get(port: int, path: str, user: str | None = None, password: str = "",
        extra: bytes = b""):
    head = f"GET {path} HTTP/1.1\r\nHost: site\r\n".encode() + extra
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode())
        head += b"Authorization: Basic " + token + b"\r\n"
    return send_request(port, head + b"\r\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("basic")
    (work / "public").mkdir()
    (work / "public" / "file.txt").write_text("a static file\n")
    (work / "users.htpasswd").write_text(f"# htpasswd -B\nalice:{htpasswd_hash('wonderland')}\n")
    api = Upstream()
    rex = Rex(work, work / "home")
    rex.port = rex.serve(f"""\
        - path: /api
          destination: {api.url}
        - path: /app
          destination: wsgi:rawapps:environ_view
        - path: /health
          destination: {api.url}
          auth: false
        - path: /admin
          destination: {api.url}
          auth:
            basic:
              realm: Admins only
              users: {{root: "{htpasswd_hash('toor')}"}}
    """, f"""\
        workers: 1
        pythonpath: ["{APPS}"]
        trusted_proxies: [127.0.0.1/32]
    """, instance="""\
        public: ./public
        auth:
          basic: {realm: Staff, htpasswd: users.htpasswd}
    """)
    rex.api = api
    yield rex
    rex.stop()
    api.close()


def test_no_credential_gets_a_challenge(site):
    reply = get(site.port, "/api/x")
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Basic realm="Staff", charset="UTF-8"'
    assert not site.api.requests


def test_a_wrong_password_or_user_is_refused(site):
    assert get(site.port, "/api/x", "alice", "looking-glass").status == 401
    assert get(site.port, "/api/x", "mallory", "wonderland").status == 401
    assert get(site.port, "/api/x", "alice", "", extra=b"X: y\r\n").status == 401
    reply = send_request(site.port, b"GET /api/x HTTP/1.1\r\nHost: site\r\n"
                                    b"Authorization: Basic not*base64\r\n\r\n")
    assert reply.status == 401


def test_the_credential_passes_and_is_not_forwarded(site):
    reply = get(site.port, "/api/x", "alice", "wonderland")
    assert reply.status == 200
    seen = site.api.requests[-1]
    assert seen["path"] == "/api/x"
    assert not {k.lower() for k in seen["headers"]} & {"authorization"}


def test_static_files_and_wsgi_apps_are_guarded_too(site):
    assert get(site.port, "/file.txt").status == 401
    reply = get(site.port, "/file.txt", "alice", "wonderland")
    assert (reply.status, reply.body) == (200, b"a static file\n")
    assert get(site.port, "/app").status == 401
    reply = get(site.port, "/app", "alice", "wonderland")
    assert reply.status == 200
    assert "HTTP_AUTHORIZATION" not in json.loads(reply.body)
    assert get(site.port, "/nothing-here").status == 401  # even a 404 needs a login


def test_a_route_may_drop_or_replace_its_instance_s_auth(site):
    assert get(site.port, "/health").status == 200
    # /admin has its own users and realm: the instance's do not count there
    reply = get(site.port, "/admin", "alice", "wonderland")
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Basic realm="Admins only", charset="UTF-8"'
    assert get(site.port, "/admin/panel", "root", "toor").status == 200


def test_failed_checks_are_bounded_per_client(site):
    """Ten failed checks per client, then 429 without running bcrypt; a credential that
    passed before is still let in from the cache; another client is not affected."""
    forwarded = b"X-Forwarded-For: 198.51.100.20\r\n"  # the trusted peer speaks for it
    assert get(site.port, "/api/ok", "alice", "wonderland", extra=forwarded).status == 200
    logged = site.output().count("basic auth: wrong password for user alice from 198.51.100.20")
    for n in range(10):
        assert get(site.port, "/api/x", "alice", f"guess{n}", extra=forwarded).status == 401
    wait_for(lambda: site.output().count(
        "basic auth: wrong password for user alice from 198.51.100.20") == logged + 10,
        what="ten failed checks in the error log")
    over = get(site.port, "/api/x", "alice", "guess10", extra=forwarded)
    assert over.status == 429
    assert 1 <= int(over.headers["retry-after"]) <= 6  # one check per 6 s comes back
    # An unchecked credential waits too, even the right one, but a remembered one passes.
    assert get(site.port, "/api/x", "mallory", "x", extra=forwarded).status == 429
    assert get(site.port, "/api/ok", "alice", "wonderland", extra=forwarded).status == 200
    other = b"X-Forwarded-For: 198.51.100.21\r\n"
    assert get(site.port, "/api/x", "alice", "guess", extra=other).status == 401
    assert site.output().count(
        "basic auth: wrong password for user alice from 198.51.100.20") == logged + 10


def test_a_verified_credential_is_not_checked_again_and_checks_do_not_block(rex, upstream):
    api = upstream()
    port = rex.serve(f"""\
        - path: /api
          destination: {api.url}
          auth:
            basic: {{users: {{alice: "{htpasswd_hash('wonderland', 13)}"}}}}
        - path: /open
          destination: {api.url}
    """, "workers: 1")
    token = base64.b64encode(b"alice:wonderland")
    request = b"GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Basic " + token + b"\r\n\r\n"
    answered: list[float] = []

    def first() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            start = time.monotonic()
            s.sendall(request)
            assert read_reply(s.makefile("rb")).status == 200
            answered.append(time.monotonic() - start)

    checking = threading.Thread(target=first)
    checking.start()
    # While the worker's one bcrypt check runs, the same worker keeps answering others.
    others = []
    while not answered:
        start = time.monotonic()
        assert send_request(port, b"GET /open HTTP/1.1\r\nHost: a\r\n\r\n").status == 200
        others.append(time.monotonic() - start)
    checking.join()
    slow = answered[0]
    assert slow > 0.2, f"a cost-13 check took only {slow:.3f}s: the test measures nothing"
    assert len(others) > 1 and max(others) < slow / 2, (slow, others)
    # The same credential again: no bcrypt, so a small fraction of the first check's time.
    start = time.monotonic()
    assert send_request(port, request).status == 200
    again = time.monotonic() - start
    assert again < slow / 4, (slow, again)
