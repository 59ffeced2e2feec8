"""Redirect routes, rewrites and trailing-slash normalisation through a real master.

The recipes docs/redirects.md shows are the configs here: www to the apex, HTTP
to HTTPS on a given port, a moved prefix, trailing slashes; plus the Location
a hostile path cannot bend.
"""

from __future__ import annotations

import json

from conftest import send_request


def get(port: int, path: str, host: str = "site.test", method: str = "GET") -> object:
    return send_request(port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                              "Connection: close\r\n\r\n".encode())


def test_redirect_recipes(rex, upstream):
    up = upstream()
    port = rex.serve(f"""\
        - path: /old/**
          redirect: {{to: "/new/{{1}}", status: 301}}
        - path: /moved
          redirect: {{to: "https://new.example.com{{uri}}"}}
        - path: /secure/**
          redirect: {{to: "https://{{host}}:8443{{uri}}", status: 308}}
        - path: /docs
          destination: {up.url}
          trailing_slash: add
        - path: /blog
          destination: {up.url}
          trailing_slash: remove
        - path: /
          destination: {up.url}
        """)
    moved = get(port, "/old/a/b/?page=2")
    assert (moved.status, moved.headers["location"]) == (301, "/new/a/b/")
    assert get(port, "/old").headers["location"] == "/new/"
    other = get(port, "/moved/x?q=1")
    assert (other.status, other.headers["location"]) == (302, "https://new.example.com/moved/x?q=1")
    https = get(port, "/secure/pay?id=7", host="shop.test:8080")
    assert (https.status, https.headers["location"]) == (308, "https://shop.test:8443/secure/pay?id=7")
    assert get(port, "/docs/intro?v=1").headers["location"] == "/docs/intro/?v=1"
    assert get(port, "/docs/app.js").status == 200  # a file name: left alone
    assert get(port, "/docs/intro/").status == 200
    assert get(port, "/blog/post/").headers["location"] == "/blog/post"
    assert get(port, "/blog/post").status == 200
    # Nothing from the path can bend the header or make a network-path reference.
    for path, location in (("/old/a%20b%22c", "/new/a%20b%22c"),
                           ("/old/%5C%5Cevil.example", "/new/%5C%5Cevil.example"),
                           ("/old//evil.example", "/new/evil.example")):
        assert get(port, path).headers["location"] == location, path
    assert get(port, "/old/x%0d%0aSet-Cookie:%20a").status == 400  # refused before routing
    assert not any(r["path"].startswith(("/old", "/moved", "/secure")) for r in up.requests)


def test_www_to_apex(rex, tmp_path):
    port = rex.serve("""\
        - path: /**
          redirect: {to: "https://example.com{uri}", status: 301}
        """, instance="server_names: [www.example.com]")
    reply = get(port, "/pricing?plan=pro", host="www.example.com")
    assert (reply.status, reply.headers["location"]) == (301, "https://example.com/pricing?plan=pro")
    assert reply.body == b""


def test_rewrite(rex, upstream):
    up = upstream()
    port = rex.serve(f"""\
        - path: /v1/**
          destination: {up.url}
          rewrite: "/api/v1{{path}}"
        - path: /users/*/avatar
          destination: {up.url}
          rewrite: "/avatars/{{1}}.png"
        - path: /search
          destination: {up.url}
          rewrite: "/find?q={{query}}&from=rex"
        """)
    def seen(path: str) -> str:
        return json.loads(get(port, path).body)["path"]

    assert seen("/v1/items?page=2") == "/api/v1/v1/items?page=2"  # the query goes along
    assert seen("/users/42/avatar") == "/avatars/42.png"
    assert seen("/users/a%20b/avatar?s=1") == "/avatars/a%20b.png?s=1"
    assert seen("/search?term") == "/find?q=term&from=rex"  # its own "?": as written
