"""rex check (certificates, WSGI imports, upstream names, --json) and rex config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import trustme
import yaml
from conftest import site_config

from rex_workers.config.dump import dump
from rex_workers.config.loader import load_config
from rex_workers.config.model import Config

VALID_DIR = Path(__file__).parent / "configs" / "valid"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def tls_config(rex, ca, key_of_another: bool) -> Path:
    issued = ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(rex.workdir / "site.crt"))
    key = ca.issue_cert("localhost") if key_of_another else issued
    key.private_key_pem.write_to_path(str(rex.workdir / "site.key"))
    return rex.write(site_config(8443, {}, instance="tls: {cert: site.crt, key: site.key}"))


def test_check_refuses_a_key_that_does_not_belong_to_the_certificate(rex, ca):
    tls_config(rex, ca, key_of_another=True)
    bad = rex.cli("check", str(rex.config))
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        f"rex: instance 0 (port 8443): cannot load TLS certificate {rex.workdir / 'site.crt'} "
        f"with key {rex.workdir / 'site.key'}: the key does not belong to the certificate")
    report = json.loads(rex.cli("check", "--json", str(rex.config)).stdout)
    assert (report["ok"], report["exit_code"]) == (False, 1)
    assert report["errors"] == [bad.stderr.strip().removeprefix("rex: ")]
    tls_config(rex, ca, key_of_another=False)
    good = rex.cli("check", str(rex.config))
    assert good.returncode == 0 and good.stdout.strip() == (
        f"{rex.config}: ok (1 instance(s), 0 route(s), 1 worker(s))")


BROKEN_IMPORT = "import json\nraise RuntimeError('DATABASE_URL is not set')\n"
NOISY_APP = """\
print("importing the app prints this")  # must not end up in `rex check --json`
from gevent import monkey

if not monkey.is_module_patched("socket"):  # a worker patches before importing the app
    raise RuntimeError("imported before gevent's monkey.patch_all()")

def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
"""


def test_check_imports_every_wsgi_app_in_a_child_like_a_worker(rex):
    (rex.workdir / "apps").mkdir()
    (rex.workdir / "apps" / "broken_app.py").write_text(BROKEN_IMPORT)
    (rex.workdir / "apps" / "noisy_app.py").write_text(NOISY_APP)
    routes = {"/a": "wsgi:broken_app:app", "/b": "wsgi:noisy_app:app",
              "/c": "wsgi:noisy_app:missing", "/d": "wsgi:json:dumps()"}
    rex.write(site_config(8000, routes, "pythonpath: apps\n"))
    bad = rex.cli("check", "--json", str(rex.config))
    assert bad.returncode == 1
    report = json.loads(bad.stdout)  # the app's print went to stderr, not into the JSON
    assert report["errors"] == [
        "wsgi:broken_app:app: RuntimeError: DATABASE_URL is not set",
        "wsgi:noisy_app:missing: AttributeError: module 'noisy_app' has no attribute 'missing'",
        "wsgi:json:dumps(): TypeError: dumps() missing 1 required positional argument: 'obj'",
    ]
    assert "importing the app prints this" in bad.stderr
    rex.write(site_config(8000, {"/b": "wsgi:noisy_app:app"}, "pythonpath: apps\n"))
    assert rex.cli("check", str(rex.config)).returncode == 0


def test_check_warns_about_upstream_names_that_do_not_resolve(rex):
    rex.write(site_config(8000, {"/a": "http://no-such-host.invalid:3000", "/b": "127.0.0.1:9",
                                 "/c": "localhost:3000"}))
    result = rex.cli("check", str(rex.config))
    assert result.returncode == 0 and "ok (1 instance(s), 3 route(s)" in result.stdout
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("rex: warning: upstream host no-such-host.invalid does not "
                              "resolve (route /a of instance 0): ")
    report = json.loads(rex.cli("check", "--json", str(rex.config)).stdout)
    assert report["ok"] and len(report["warnings"]) == 1 and report["errors"] == []


def test_check_json_reports_config_errors_with_exit_2(rex):
    rex.write("server:\n  instances:\n    - port: 0\n      rootes: []\n")
    result = rex.cli("check", "--json", str(rex.config))
    assert result.returncode == 2 and result.stderr == ""
    report = json.loads(result.stdout)
    assert report["config"] == str(rex.config) and report["ok"] is False
    assert [e.split(": ")[1] for e in report["errors"]] == [
        "server.instances.0.port", "server.instances.0.rootes"]


def normalized(config: Config) -> Config:
    """Without what depends on the file rather than the config: its path, bytes and lines."""
    instances = tuple(dataclasses.replace(i, line=0, routes=tuple(
        dataclasses.replace(r, line=0) for r in i.routes)) for i in config.instances)
    return dataclasses.replace(config, path="", digest="", instances=instances)


@pytest.mark.parametrize("name", ["full.yaml", "vhosts.yaml", "wsgi.yaml", "anchors.yaml",
                                  "front-door.yaml",
                                  "logging-off.yaml", "original-readme-fallback.rex.config.yaml"])
def test_the_effective_config_loads_back_into_the_same_config(name: str, tmp_path) -> None:
    config = load_config(str(VALID_DIR / name))
    copy = VALID_DIR / f".effective-{name}"  # beside it: relative paths are already absolute
    try:
        copy.write_text(yaml.safe_dump(dump(config), sort_keys=False))
        assert normalized(load_config(str(copy))) == normalized(config)
    finally:
        copy.unlink()


def test_rex_config_prints_every_default(rex, tmp_path):
    (rex.workdir / "public").mkdir()
    rex.write(site_config(8000, {"/api": "localhost:3000", "/files": "static:public"},
                          "workers: 3\n", instance="public: public"))
    result = rex.cli("config", str(rex.config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# The effective config of {rex.config}, every default")
    doc = yaml.safe_load(result.stdout)
    (site,) = doc["server"]["instances"]
    assert site["public"] == str(rex.workdir / "public")  # resolved
    assert site["static"]["index"] == ["index.html"] and site["static"]["listing"] is False
    route, files = site["routes"]
    assert route["destination"] == [{"url": "http://localhost:3000", "weight": 1,
                                     "backup": False, "max_fails": 1, "fail_timeout": 10.0}]
    assert route["timeouts"] == {"connect": 5.0, "read": 60.0} and route["retries"] == 1
    assert files == {"path": "/files", "destination": f"static:{rex.workdir / 'public'}",
                     "priority": 0, "static": site["static"], "compress": False}
    # no proxy options on a static: route; its static options are the instance's unless
    # it has its own
    printed = rex.workdir / "printed.yaml"
    printed.write_text(result.stdout)
    assert normalized(load_config(str(printed))) == normalized(load_config(str(rex.config)))
    assert doc["workers"] == 3 and doc["limits"]["header_bytes"] == 16384
    assert doc["logging"] == {"access": "stdout", "format": "combined", "error": "stderr",
                              "level": "info"}
    rex.write("server:\n  instances:\n    - port: 0\n")
    bad = rex.cli("config", str(rex.config))
    assert bad.returncode == 2 and bad.stderr.startswith(f"rex: {rex.config}:3: ")
