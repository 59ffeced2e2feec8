"""A request gets the same routing decision whether or not its instance has `public`.

Issue 17: `GET /api/a/../c` got a 403 from the static layer when `public` was
set although `/api` is a proxy route, and was forwarded without it. The rule
(docs/static.md, docs/proxying.md): routes match the normalized path; a raw
spelling the static layer distrusts never reads the file system and never
decides; only a plain spelling of an existing file is served before the routes.
One master serves two instances with the same routes, one with a root.
"""

from __future__ import annotations

import json

import pytest
from conftest import free_port, send_request


@pytest.fixture(scope="module")
def ports(rex_module, upstream_module, tmp_path_factory):
    public = tmp_path_factory.mktemp("public")
    (public / "index.html").write_text("<h1>home</h1>")
    (public / "c").write_text("the file c")  # under the root, beside no route
    rec = upstream_module()
    with_root, without = free_port(), free_port()
    routes = f'[{{path: /api, destination: "{rec.url}"}}]'
    rex_module.write(f"""\
        server:
          instances:
            - {{port: {with_root}, host: 127.0.0.1, public: {public}, routes: {routes}}}
            - {{port: {without}, host: 127.0.0.1, routes: {routes}}}
        logging: {{access: off}}
        workers: 1
    """)
    rex_module.start(ports=(with_root, without))
    return {"public": with_root, "bare": without}


def fetch(port: int, target: bytes) -> tuple[int, str | None]:
    """(status, the path the upstream received, or None when nothing was forwarded)."""
    reply = send_request(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    forwarded = None
    if reply.headers.get("content-type") == "application/json":
        forwarded = json.loads(reply.body)["path"]
    return reply.status, forwarded


@pytest.mark.parametrize(("target", "status", "forwarded"), [
    (b"/api/a/../c", 200, "/api/a/../c"),  # the reported request: forwarded as it is
    (b"/api/./c", 200, "/api/./c"),
    (b"/api/%2e%2e/api/c", 200, "/api/%2e%2e/api/c"),  # an encoded dot-segment alike
    (b"/x/../api/q?y=1", 200, "/x/../api/q?y=1"),  # /api/q once normalized: the route's
    (b"/api/../c", 404, None),  # /c once normalized: no route; the file is not served
    (b"/a/../index.html", 404, None),  # no route: the same 404 with or without a root
    (b"/%252e%252e/c", 404, None),  # "%2e%2e" decoded once is a name, not a dot-segment
    (b"/../c", 400, None),  # above the root: refused before any decision
], ids=lambda v: v.decode() if isinstance(v, bytes) else None)
def test_same_decision_with_and_without_public(ports, target, status, forwarded):
    assert fetch(ports["public"], target) == (status, forwarded)
    assert fetch(ports["bare"], target) == (status, forwarded)


def test_a_plain_spelling_of_an_existing_file_is_still_served_first(ports):
    reply = send_request(ports["public"], b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 200 and reply.body == b"the file c"
    assert fetch(ports["bare"], b"/c") == (404, None)
