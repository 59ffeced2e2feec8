"""The ``static:DIR`` route destination, through a real master: a directory at a URL prefix."""

from __future__ import annotations

import pytest
from conftest import send_request

from rex_static.resolve import Listing, Node, Redirect, below_mount, remount
from rex_workers.config.loader import ConfigError, load_config


def get(port: int, path: str, method: str = "GET", extra: str = "") -> object:
    return send_request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}"
                              "Connection: close\r\n\r\n".encode())


def test_a_static_route_serves_its_directory_below_the_prefix(rex, tmp_path, upstream):
    assets = tmp_path / "assets"
    (assets / "css").mkdir(parents=True)
    (assets / "css" / "site.css").write_text("body{}\n")
    (assets / "index.html").write_text("<h1>assets</h1>\n")
    (tmp_path / "secret.txt").write_text("outside the directory\n")
    up = upstream()
    port = rex.serve({"/static": "static:assets", "/": up.url},
                     instance="static: {listing: true, cache_control: max-age=60}")
    reply = get(port, "/static/css/site.css")
    assert (reply.status, reply.body) == (200, b"body{}\n")
    assert reply.headers["content-type"].startswith("text/css")
    assert reply.headers["cache-control"] == "max-age=60"  # the instance's static: options
    assert get(port, "/static/css/site.css", extra=f"If-None-Match: {reply.headers['etag']}\r\n"
               ).status == 304
    # The mount and its directories redirect to their slash, with the prefix kept.
    for path, location in (("/static", "/static/"), ("/static/css", "/static/css/")):
        moved = get(port, path)
        assert (moved.status, moved.headers["location"]) == (301, location)
    assert get(port, "/static/").body == b"<h1>assets</h1>\n"
    listing = get(port, "/static/css/")
    assert listing.status == 200 and b"Index of /static/css/" in listing.body
    # A missing file is the route's 404: the request never falls through to "/".
    assert get(port, "/static/nope.css").status == 404
    # Nothing outside the directory: ".." is resolved before routing (this leaves the
    # route), a symlink out of the directory is refused like one out of `public`.
    (assets / "escape.txt").symlink_to(tmp_path / "secret.txt")
    for path in ("/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/escape.txt"):
        assert b"outside the directory" not in get(port, path).body, path
    assert get(port, "/static/escape.txt").status == 403
    refused = get(port, "/static/css/site.css", "POST", "Content-Length: 0\r\n")
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD")
    seen = len(up.requests)  # only the ".." requests that left the route reached it
    assert get(port, "/staticx").status == 200 and len(up.requests) == seen + 1


@pytest.mark.parametrize(("path", "segments", "mount", "below"), [
    ("/static/css/a.css", 1, "/static", "/css/a.css"),
    ("/static/", 1, "/static", "/"),
    ("/static", 1, "/static", ""),
    ("/a/b/c/", 2, "/a/b", "/c/"),
])
def test_below_mount(path: str, segments: int, mount: str, below: str) -> None:
    assert below_mount(path, segments) == (mount, below)


def test_remount_puts_the_prefix_back() -> None:
    node = Node("dir", "/srv/x")
    assert remount(Redirect("/css/"), "/my files") == Redirect("/my%20files/css/")
    assert remount(Listing(node, "/css/"), "/static") == Listing(node, "/static/css/")
    assert remount(None, "/static") is None


def test_static_destination_errors(tmp_path) -> None:
    (tmp_path / "file.txt").write_text("x")
    config = tmp_path / "rex.config.yaml"
    config.write_text(
        "server:\n  instances:\n    - port: 8000\n      routes:\n"
        '        - {path: /a, destination: "static:missing"}\n'
        '        - {path: /b, destination: "static:file.txt"}\n'
        '        - {path: /c, destination: ["static:.", localhost:3000]}\n'
        '        - {path: /d, destination: "static:.", buffer_requests: false}\n'
        '        - {path: /e, destination: "static:"}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(config))
    assert caught.value.errors == [
        f"{config}:5: server.instances.0.routes.0.destination: static: directory not found: "
        f"{tmp_path / 'missing'}",
        f"{config}:6: server.instances.0.routes.1.destination: static: not a directory: "
        f"{tmp_path / 'file.txt'}",
        f"{config}:7: server.instances.0.routes.2.destination.0: a static: destination must "
        "be a route's only destination",
        f"{config}:8: server.instances.0.routes.3.buffer_requests: buffer_requests is only for "
        "proxied destinations, not static:",
        f"{config}:9: server.instances.0.routes.4.destination: static: needs a directory "
        "(static:./assets)",
    ]
    (tmp_path / "sub").mkdir()
    config.write_text('server:\n  instances:\n    - port: 8000\n      routes:\n'
                      '        - {path: /a, destination: " static: sub "}\n')
    # relative to the config file, like public
    assert load_config(str(config)).instances[0].routes[0].static == str(tmp_path / "sub")


def test_static_docs_examples_load(tmp_path) -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "static.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert any("static:./" in b for b in blocks)
    for name in ("dist", "public"):
        (tmp_path / name).mkdir()
    for block in blocks:
        config = tmp_path / "rex.config.yaml"
        config.write_text(block)
        assert load_config(str(config)).instances


def test_static_routes_beside_public_each_with_every_static_feature(rex, tmp_path):
    import gzip

    for name in ("public", "docs", "build"):
        (tmp_path / name).mkdir()
    (tmp_path / "public" / "index.html").write_text("<h1>home</h1>\n")
    (tmp_path / "docs" / "guide.txt").write_bytes(b"0123456789" * 10)
    (tmp_path / "build" / "app.js").write_text("console.log(1);\n" * 20)
    (tmp_path / "build" / "app.js.gz").write_bytes(gzip.compress(b"console.log(1);\n" * 20))
    port = rex.serve("""\
        - path: /docs
          destination: static:docs
          static: {listing: true, cache_control: no-cache}
        - path: /build/assets
          destination: static:build
        """, instance="public: public\nstatic: {cache_control: max-age=3600}")
    assert get(port, "/").body == b"<h1>home</h1>\n"  # public keeps working beside them
    ranged = get(port, "/docs/guide.txt", extra="Range: bytes=10-19\r\n")
    assert (ranged.status, ranged.body) == (206, b"0123456789")
    assert ranged.headers["content-range"] == "bytes 10-19/100"
    assert get(port, "/docs/guide.txt", extra="Range: bytes=500-\r\n").status == 416
    full = get(port, "/docs/guide.txt")
    assert full.headers["cache-control"] == "no-cache"  # the route's own option
    assert get(port, "/docs/guide.txt", extra=f"If-Modified-Since: "
               f"{full.headers['last-modified']}\r\n").status == 304
    assert b"guide.txt" in get(port, "/docs/").body  # its own listing option
    packed = get(port, "/build/assets/app.js", extra="Accept-Encoding: gzip\r\n")
    assert packed.headers["content-encoding"] == "gzip"
    assert gzip.decompress(packed.body) == b"console.log(1);\n" * 20
    assert packed.headers["cache-control"] == "max-age=3600"  # the instance's options
    assert get(port, "/build/assets/").status == 404  # no listing there
    assert get(port, "/build/assets/app.js", "HEAD").body == b""


def test_route_static_options_only_on_static_routes(tmp_path) -> None:
    config = tmp_path / "rex.config.yaml"
    config.write_text("server:\n  instances:\n    - port: 8000\n      routes:\n"
                      "        - {path: /a, destination: localhost:3000,\n"
                      "           static: {listing: true}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(config))
    assert caught.value.errors == [
        f"{config}:6: server.instances.0.routes.0.static: static options on a route are only "
        "for static: destinations"]
