"""The config loader: valid files against model values, invalid ones against exact error lines.

Configs under test are files in ``tests/configs/``: ``valid/*.yaml`` (the original Rex's
configs among them, verbatim) with the values expected in ``VALID`` below, and
``invalid/*.yaml`` each with a sibling ``.expected`` holding the exact error lines
(``{dir}`` stands for the absolute path of ``invalid/``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import yaml
from hypothesis import HealthCheck as Health
from hypothesis import given, settings
from hypothesis import strategies as st

from rex_workers.config.loader import (
    ConfigError,
    config_digest,
    default_config,
    load_config,
    parse_destination,
)
from rex_workers.config.model import (
    Config,
    Cors,
    HeaderRules,
    HealthCheck,
    Redirect,
    Timeouts,
    Upstream,
)
from rex_workers.config.schema import SCHEMA

CONFIGS = Path(__file__).parent / "configs"
VALID_DIR = CONFIGS / "valid"
INVALID_DIR = CONFIGS / "invalid"
DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"
SEED = "original-seed-example.rex.config.yaml"
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def up(url: str, scheme: str, host: str, port: int, base: str = "", **kw) -> Upstream:
    return Upstream(url=url, scheme=scheme, host=host, port=port, base_path=base, **kw)


# file -> {attribute path: expected value}; "site"/"app"/"tls/..." are under valid/
VALID = {
    "original-starter.rex.config.yaml": {
        "workers": CPUS,
        "instances.#": 1,
        "instances.0.port": 8000,
        "instances.0.host": "0.0.0.0",
        "instances.0.public": None,
        "instances.0.routes": (),
        "instances.0.line": 6,
        "upstream": (),
    },
    "original-readme-fallback.rex.config.yaml": {
        "workers": 1,
        "instances.0.port": 80,
        "instances.0.routes.#": 3,
        "instances.0.routes.0.path": "/path1",
        "instances.0.routes.0.upstreams": (up("http://example.com", "http", "example.com", 80),),
        "instances.0.routes.1.index": 1,
        "instances.0.routes.1.line": 7,
        "instances.0.routes.2.path": "/*",
        "instances.0.routes.2.upstreams.0.host": "fallback.example.com",
        "instances.0.routes.2.index": 2,
        "instances.0.routes.2.line": 9,
    },
    "full.yaml": {
        "instances.0.host": "127.0.0.1",
        "instances.0.public": str(VALID_DIR / "site"),
        "instances.0.server_names": ("example.com", "*.example.com"),
        "instances.0.static.index": ("index.html", "index.htm"),
        "instances.0.static.fallback": "index.html",
        "instances.0.static.cache_control": "public, max-age=3600",
        "instances.0.static.precompressed": False,
        "instances.0.static.listing": True,
        "instances.0.static.follow_symlinks": True,
        "instances.0.static.dotfiles": True,
        "instances.0.routes.0.upstreams": (
            up("http://localhost:3000/v1/", "http", "localhost", 3000, "/v1"),),
        "instances.0.routes.0.strip_prefix": True,
        "instances.0.routes.0.preserve_host": True,
        "instances.0.routes.0.methods": frozenset({"GET", "POST"}),
        "instances.0.routes.0.priority": 5,
        "instances.0.routes.0.retries": 2,
        # the route's read wins, the rest comes from the top level
        "instances.0.routes.0.timeouts": Timeouts(connect=1.5, read=120.0, header=5.0, idle=60.0),
        "instances.0.routes.0.line": 17,
        "instances.0.routes.1.upstreams": (
            up("http://localhost:8001", "http", "localhost", 8001),
            up("https://backend.internal:8443", "https", "backend.internal", 8443,
               weight=3, backup=True, max_fails=0, fail_timeout=30.0)),
        "instances.0.routes.1.balance": "round_robin",  # "weighted" is its alias
        "instances.0.routes.1.health_check": HealthCheck("/healthz", 2.0, 0.5, 3, 1),
        "instances.0.routes.1.methods": None,
        "instances.0.routes.2.upstreams": (up("http://[::1]:9000", "http", "::1", 9000),),
        "instances.0.routes.2.balance": "least_conn",
        "instances.0.routes.2.health_check": HealthCheck(),
        "instances.1.tls.cert": str(VALID_DIR / "tls" / "cert.pem"),
        "instances.1.tls.key": str(VALID_DIR / "tls" / "key.pem"),
        "instances.1.scheme": "https",
        "instances.1.line": 39,
        "upstream": (up("http://localhost:8001", "http", "localhost", 8001),
                     up("http://10.0.0.2", "http", "10.0.0.2", 80)),
        "upstream_balance": "ip_hash",
        "workers": 3,
        "timeouts": Timeouts(connect=1.5, read=90.0, header=5.0, idle=60.0),
        "limits.header_bytes": 32 * 1024,
        "limits.body_bytes": 10 * 1024 * 1024,
        "limits.connections": 500,
        "logging.access": str(VALID_DIR / "logs" / "access.log"),
        "logging.format": "json",
        "logging.error": "stdout",
        "logging.level": "debug",
        "admin.port": 9901,
        "admin.host": "127.0.0.1",
        "graceful_timeout": 0.0,
        "timeout": 45.0,
        "max_requests": 1000,
        "max_requests_jitter": 50,
        "reuse_port": True,
        "trusted_proxies": ("10.0.0.0/8", "192.168.1.7/32", "fd00::/8"),
        "monkey_patch": True,
        "pythonpath": (str(VALID_DIR / "app"), str(VALID_DIR / "site")),
    },
    "vhosts.yaml": {
        "instances.#": 5,
        "instances.1.server_names": ("b.example.com", "*.b.example.com"),
        "instances.2.server_names": (),
        "instances.2.routes.0.upstreams.0.port": 3003,
        "instances.4.address": ("127.0.0.1", 8001),
    },
    "front-door.yaml": {
        "rules.security_headers": True,
        "rules.response_headers": HeaderRules(set=(("X-Env", "prod"),), remove=("server",)),
        "instances.0.inherited.security_headers": True,
        "instances.0.rules.security_headers": None,
        "instances.0.rules.cors": Cors(origins=("https://app.example.com",), max_age=600),
        "instances.0.rules.error_pages": (("404", str(VALID_DIR / "site" / "index.html")),
                                          ("5xx", str(VALID_DIR / "site" / "index.html"))),
        "instances.0.rules.request_headers": HeaderRules(
            set=(("X-Real-IP", "{client_ip}"),),
            add=(("X-Trace", "{request_id}"), ("X-Trace", "2")), remove=("cookie",)),
        "instances.0.routes.0.redirect": Redirect(to="/new/{1}", status=301),
        "instances.0.routes.0.upstreams": (),
        "instances.0.routes.1.rewrite": "/api/v1{path}",
        "instances.0.routes.1.rules.cors": False,
        "instances.0.routes.1.rules.intercept_errors": True,
        "instances.0.routes.2.static_options.listing": True,
        "instances.0.routes.2.rules.trailing_slash": "add",
    },
    "wsgi.yaml": {
        "has_wsgi": True,
        "instances.0.routes.0.wsgi": "mysite.wsgi:application",
        "instances.0.routes.0.upstreams": (),
        "instances.0.routes.0.pool": 20,
        "instances.0.routes.1.wsgi": "factory_app:create_app()",
        "instances.0.routes.1.pool": None,
        "instances.0.routes.2.wsgi": None,
        "instances.0.routes.2.methods": frozenset({"GET"}),
        "instances.0.routes.2.timeouts": Timeouts(connect=2.0, read=20.0),
        "pythonpath": (str(VALID_DIR / "app"),),
    },
    "logging-off.yaml": {
        "logging.access": None,
        "logging.level": "warning",
        "instances.0.routes": (),
        "upstream": (),
    },
    "anchors.yaml": {
        "instances.0.public": str(VALID_DIR / "site"),
        "instances.0.routes.0.path": "/one",
        "instances.0.routes.0.balance": "random",
        "instances.0.routes.1.balance": "ip_hash",
        "instances.0.routes.1.upstreams.1.port": 8002,
        # keys brought in by `<<` keep the lines where they are written
        "instances.1.port": 8001,
        "instances.1.line": 20,
        "instances.1.routes.0.path": "/shared",
        "instances.1.routes.0.line": 8,
    },
}


def resolve(obj: object, dotted: str) -> object:
    """``instances.0.port`` through attributes and tuple indexes; ``#`` is a length."""
    for part in dotted.split("."):
        if part == "#":
            obj = len(obj)
        elif part.isdigit():
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def test_every_valid_file_has_expectations() -> None:
    assert sorted(p.name for p in VALID_DIR.glob("*.yaml")) == sorted([*VALID, SEED])


def test_original_configs_are_copied_verbatim() -> None:
    shared = Path("/work/shared/compat")
    if not shared.is_dir():
        pytest.skip("the original configs are not on this machine")
    for original in shared.glob("*.yaml"):
        assert (VALID_DIR / original.name).read_bytes() == original.read_bytes()


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_config(name: str) -> None:
    config = load_config(str(VALID_DIR / name))
    assert isinstance(config, Config)
    assert config.path == str(VALID_DIR / name)
    assert config.digest == hashlib.sha256((VALID_DIR / name).read_bytes()).hexdigest()
    for dotted, expected in VALID[name].items():
        assert resolve(config, dotted) == expected, dotted


def test_seed_example_reports_its_missing_public(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(VALID_DIR)
    with pytest.raises(ConfigError) as caught:
        load_config(SEED)
    assert caught.value.errors == [
        f"{SEED}:4: server.instances.0.public: "
        "public directory not found: /absolute/path/to/public"]


def test_seed_example_loads_with_its_public_pointed_at_a_directory(tmp_path: Path) -> None:
    text = (VALID_DIR / SEED).read_text()
    public = tmp_path / "www"
    public.mkdir()
    config_file = tmp_path / SEED
    config_file.write_text(text.replace("/absolute/path/to/public", str(public)))
    config = load_config(str(config_file))
    (instance,) = config.instances
    assert (instance.port, instance.public) == (80, str(public))
    assert [(r.path, r.upstreams[0].key, r.line) for r in instance.routes] == [
        ("/api", "http://localhost:3000", 6), ("/*", "http://localhost:5173", 8)]
    assert config.workers == CPUS


@pytest.mark.parametrize("name", sorted(p.name for p in INVALID_DIR.glob("*.yaml")))
def test_invalid_config(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected_file = INVALID_DIR / name.replace(".yaml", ".expected")
    expected = expected_file.read_text().replace("{dir}", str(INVALID_DIR)).splitlines()
    monkeypatch.chdir(INVALID_DIR)  # error lines name the file as it was given
    with pytest.raises(ConfigError) as caught:
        load_config(name)
    assert caught.value.errors == expected
    assert str(caught.value) == "\n".join(expected)


def test_every_error_line_has_the_promised_shape() -> None:
    line = re.compile(r"[^:]+\.yaml:\d+: (\w[\w.-]*: )?\S.*")
    for expected in INVALID_DIR.glob("*.expected"):
        for text in expected.read_text().splitlines():
            assert line.fullmatch(text), text


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(missing))
    assert caught.value.errors == [f"{missing}: config file not found"]


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))  # a directory: open() fails like any unreadable path
    assert caught.value.errors == [f"{tmp_path}: cannot read config file: Is a directory"]


def test_relative_paths_follow_the_config_file_not_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "conf" / "site"
    site.mkdir(parents=True)
    (tmp_path / "conf" / "rex.yaml").write_text(
        "server:\n  instances:\n    - port: 8000\n      public: site\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/rex.yaml")
    assert config.instances[0].public == str(site)
    assert config.path == str(tmp_path / "conf" / "rex.yaml")


def test_digest_follows_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "rex.yaml"
    path.write_text("server: {instances: [{port: 8000}]}\n")
    first = load_config(str(path)).digest
    assert first == config_digest(str(path))
    path.write_text("server: {instances: [{port: 8001}]}\n")
    assert config_digest(str(path)) != first
    with pytest.raises(ConfigError):
        config_digest(str(tmp_path / "gone.yaml"))


def test_loading_a_config_imports_no_gevent() -> None:
    # the master validates configs and must stay free of gevent (SPEC §1)
    code = ("import sys; from rex_workers.config.loader import load_config; "
            f"load_config({str(VALID_DIR / 'full.yaml')!r}); "
            "assert 'gevent' not in sys.modules, 'gevent imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_default_config_serves_the_welcome_page_on_8000() -> None:
    config = default_config()
    (instance,) = config.instances
    assert (instance.port, instance.host, instance.routes, instance.public) == (
        8000, "0.0.0.0", (), None)
    assert config.upstream == () and config.path == "" and not config.has_wsgi


@pytest.mark.parametrize(("text", "expected"), [
    ("localhost:8001", up("http://localhost:8001", "http", "localhost", 8001)),
    ("localhost", up("http://localhost", "http", "localhost", 80)),
    ("https://api.example.com", up("https://api.example.com", "https", "api.example.com", 443)),
    ("HTTP://Example.COM:81/", up("HTTP://Example.COM:81/", "http", "example.com", 81)),
    ("http://h:3000/v1/x/", up("http://h:3000/v1/x/", "http", "h", 3000, "/v1/x")),
    ("[::1]:9000", up("http://[::1]:9000", "http", "::1", 9000)),
    (" 10.0.0.7 ", up("http://10.0.0.7", "http", "10.0.0.7", 80)),
])
def test_parse_destination(text: str, expected: Upstream) -> None:
    assert parse_destination(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("ftp://h", "unsupported scheme ftp://"),
    ("h:0", "invalid port in h:0"),
    ("h:65536", "invalid port in h:65536"),
    ("http://h/x#y", "cannot have a query or fragment"),
    ("http://a@h", "credentials"),
    ("http://:80", "invalid host"),
    ("", "cannot be empty"),
    ("wsgi:app:app", "is a WSGI app, not a network address"),  # a route form only
])
def test_parse_destination_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_destination(text)


_labels = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)


@given(host=st.lists(_labels, min_size=1, max_size=4).map(".".join),
       port=st.integers(1, 65535), scheme=st.sampled_from(["http", "https"]),
       base=st.from_regex(r"(/[a-z0-9_~-]{1,8}){0,3}", fullmatch=True))
def test_parse_destination_round_trips(host: str, port: int, scheme: str, base: str) -> None:
    parsed = parse_destination(f"{scheme}://{host}:{port}{base}/")
    assert (parsed.scheme, parsed.host, parsed.port, parsed.base_path) == (
        scheme, host, port, base)
    assert parsed.key == f"{scheme}://{host}:{port}"


def _schema_keys(schema: dict) -> set[str]:
    keys = set(schema)
    for rules in schema.values():
        inner = rules.get("schema")
        while isinstance(inner, dict) and "type" in inner and "schema" in inner:
            inner = inner["schema"]  # a list's item rules, down to a mapping's fields
        if isinstance(inner, dict) and "type" not in inner:
            keys |= _schema_keys(inner)
    return keys


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.floats(-1, 1e6),
    st.sampled_from(["auto", "localhost:1", "/api", "/*", "wsgi:a:b()", "10m", "30s", ".",
                     "off", "stdout", "http://h:1/x", "0.0.0.0", "example.com", "10.0.0.0/8"]),
    st.text(max_size=8))
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(sorted(_schema_keys(SCHEMA) | {"x", "x-y"})),
                        inner, max_size=5)),
    max_leaves=25)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[Health.too_slow, Health.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(sorted(SCHEMA)), _documents, max_size=6))
def test_any_document_loads_or_reports_lines(doc: dict, tmp_path_factory) -> None:
    """Whatever the YAML holds: a Config or ConfigError lines, never another exception."""
    path = tmp_path_factory.mktemp("fuzz") / "rex.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(load_config(str(path)), Config)
    except ConfigError as exc:
        assert exc.errors
        assert all(line.startswith(f"{path}:") for line in exc.errors)


# -- the documentation's examples are configs too

def _doc_examples() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


def test_docs_have_examples() -> None:
    assert len(_doc_examples()) >= 5


@pytest.mark.parametrize("number", range(len(_doc_examples()) if DOCS.exists() else 0))
def test_docs_example_loads(number: int, tmp_path: Path) -> None:
    for directory in ("public", "certs", "logs", "src"):
        (tmp_path / directory).mkdir()
    for name in ("site.crt", "site.key"):
        (tmp_path / "certs" / name).write_text("placeholder: only existence is checked\n")
    # Upstream TLS files are loaded by the config check: these must be real PEM.
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "certs" / "internal-ca.pem"))
    client = ca.issue_cert("rex-client.internal")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "certs" / "rex-client.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "certs" / "rex-client.key"))
    config_file = tmp_path / "rex.config.yaml"
    config_file.write_text(_doc_examples()[number])
    assert load_config(str(config_file)).instances


def test_docs_list_every_top_level_key() -> None:
    text = DOCS.read_text()
    for key in SCHEMA:
        assert f"`{key}" in text, key


def test_valid_dir_support_files_are_in_place() -> None:
    # the valid configs point at these; a missing one would fail them for the wrong reason
    for relative in ("site/index.html", "tls/cert.pem", "tls/key.pem", "logs", "app"):
        assert (VALID_DIR / relative).exists(), relative
