"""The ``compress`` key: scopes (the nearest wins, key by key), defaults, Brotli's absence,
and the filter's pure policy (media types, Vary) without a socket."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import yaml
from conftest import ROOT

from rex_workers.config.dump import dump
from rex_workers.config.loader import load_config
from rex_workers.config.model import COMPRESSIBLE_TYPES, Compression
from rex_workers.http.compress import Compress, MediaTypes, _vary
from rex_workers.http.message import Response
from rex_workers.http.request import Request

SCOPES = """\
compress: {level: 3}
server:
  instances:
    - port: 8080
      compress: {algorithms: gzip, min_length: 1k}
      routes:
        - {path: /off, destination: "http://localhost:3000", compress: false}
        - path: /own
          destination: http://localhost:3000
          compress: {level: {br: 9}, types: [text/*, application/JSON]}
        - {path: /inherits, destination: "http://localhost:3000"}
    - port: 8081
      compress: false
      routes:
        - {path: /on, destination: "http://localhost:3000", compress: true}
    - port: 8082
"""


def load(tmp_path, text: str):
    path = tmp_path / "rex.config.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path))


def test_the_nearest_scope_wins_key_by_key(tmp_path):
    config = load(tmp_path, SCOPES)
    assert config.compress == Compression(gzip_level=3, br_level=3)
    first, second, third = config.instances
    assert first.compress == Compression(algorithms=("gzip",), min_length=1024, gzip_level=3,
                                         br_level=3)
    off, own, inherits = first.routes
    assert off.compress is None and inherits.compress == first.compress
    assert own.compress == Compression(algorithms=("gzip",), min_length=1024, gzip_level=3,
                                       br_level=9, types=("text/*", "application/json"))
    # Switched off on the instance, on again on a route: the top level's settings come back.
    assert second.compress is None
    assert second.routes[0].compress == Compression(gzip_level=3, br_level=3)
    assert third.compress == config.compress


def test_off_by_default_and_true_means_the_documented_defaults(tmp_path):
    config = load(tmp_path, "server: {instances: [{port: 8080}]}\n")
    assert config.compress is None and config.instances[0].compress is None
    on = load(tmp_path, "compress: true\nserver: {instances: [{port: 8080}]}\n").compress
    assert on == Compression() and on.algorithms == ("br", "gzip") and on.min_length == 512
    assert on.types == COMPRESSIBLE_TYPES


def test_rex_config_prints_it_and_it_loads_back(tmp_path):
    config = load(tmp_path, SCOPES)
    printed = tmp_path / "printed.yaml"
    printed.write_text(yaml.safe_dump(dump(config)))
    again = load_config(str(printed))
    assert [i.compress for i in again.instances] == [i.compress for i in config.instances]
    assert [r.compress for i in again.instances for r in i.routes] == \
        [r.compress for i in config.instances for r in i.routes]


def test_without_the_brotli_package(tmp_path):
    """br is left out of the default and refused by name, with the fix in the message."""
    (tmp_path / "default.yaml").write_text("compress: true\nserver: {instances: [{port: 1}]}\n")
    (tmp_path / "br.yaml").write_text(
        "compress: {algorithms: [br, gzip]}\nserver: {instances: [{port: 1}]}\n")
    script = textwrap.dedent(f"""\
        import sys
        sys.modules["brotli"] = None  # as if it were not installed
        from rex_workers.config.loader import ConfigError, load_config
        from rex_workers.http.encoders import ENCODERS
        print(load_config({str(tmp_path / "default.yaml")!r}).compress.algorithms)
        print(sorted(ENCODERS))
        try:
            load_config({str(tmp_path / "br.yaml")!r})
        except ConfigError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=True)
    message = ("compress.algorithms: br needs the brotli package: "
               "pip install 'rex-proxy[brotli]' (or leave br out)")
    assert run.stdout.splitlines() == ["('gzip',)", "['gzip']",
                                       f"{tmp_path / 'br.yaml'}:1: {message}"]
    assert f"rex.config.yaml:1: {message}" in (ROOT / "docs" / "compression.md").read_text()


# -- the filter's policy, without a connection -------------------------------------------


def test_media_types():
    match = MediaTypes(COMPRESSIBLE_TYPES)
    for yes in (b"text/html; charset=utf-8", b"TEXT/CSS", b"application/json",
                b"application/problem+json", b"application/rss+xml", b"image/svg+xml",
                b"application/wasm", b"text/event-stream"):
        assert match(yes), yes
    for no in (b"image/png", b"application/octet-stream", b"application/zip", b"font/woff2",
               b"video/mp4", b"", b"json", b"applicationXjson"):
        assert not match(no), no


def test_vary_is_extended_once():
    fields = [(b"vary", b"Origin")]
    _vary(fields, 0)
    _vary(fields, 0)
    assert fields == [(b"vary", b"Origin, Accept-Encoding")]
    star = [(b"Vary", b"*")]
    _vary(star, 0)
    assert star == [(b"Vary", b"*")]


def test_a_response_of_unknown_length_is_compressed_and_a_short_one_is_not():
    compress = Compress(Compression(algorithms=("gzip",)))
    req = Request("GET", b"/", "/", b"", "1.1", [(b"Accept-Encoding", b"gzip")])
    streamed = Response(200, [(b"Content-Type", b"text/plain")], iter([b"x"]), None)
    assert compress(req, streamed) is not None and streamed.length is None
    short = Response(200, [(b"Content-Type", b"text/plain")], b"x" * 511)
    assert compress(req, short) is None and short.length == 511
    assert short.headers == [(b"Content-Type", b"text/plain")]  # no Vary: never compressed


def test_the_starter_config_turns_it_on(tmp_path):
    """What ``rex --init`` writes compresses (off by default, like nginx, but on there)."""
    (tmp_path / "public").mkdir()
    text = (ROOT / "conf" / "rex.config.yaml").read_text()
    assert load(tmp_path, text).instances[0].compress is not None
