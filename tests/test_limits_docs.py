"""docs/limits.md: its configs load, and the responses and errors it shows are Rex's own."""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import replace

import pytest
import trustme
import yaml
from conftest import ROOT, free_port, site_config
from test_limits import get

from rex_workers.config.loader import default_config, load_config
from rex_workers.config.model import Route
from rex_workers.shared.privileges import problem

TEXT = (ROOT / "docs" / "limits.md").read_text()
CONFIGS = re.findall(r"```yaml\n(.*?)```", TEXT, re.S)


def has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.parametrize("block", CONFIGS, ids=[f"yaml-{n}" for n in range(len(CONFIGS))])
def test_every_config_on_the_page_loads(block, tmp_path):
    raw = yaml.safe_load(block)
    for inst in raw["server"]["instances"]:
        if "tls" in inst:  # real files where the page names them
            issued = trustme.CA().issue_cert("example.com")
            inst["tls"] = {"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")}
            issued.cert_chain_pems[0].write_to_path(inst["tls"]["cert"])
            issued.private_key_pem.write_to_path(inst["tls"]["key"])
    if raw.get("user") == "www-data" and not has_user("www-data"):
        raw["user"] = "nobody"  # the page's account is Debian's; any real one will do
    path = tmp_path / "rex.config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(str(path))
    assert any(i.limited for i in config.instances) or config.user


def test_the_429_shown_is_the_one_rex_sends(rex, upstream):
    shown = re.search(r"```http\n(.*?)```", TEXT, re.S)[1].strip().splitlines()
    up = upstream()
    port = rex.serve(f"- {{path: /, destination: '{up.url}', "
                     "rate_limit: {rate: 10/h, burst: 10}}\n")
    for _ in range(10):
        assert get(port)[0] == 200
    status, fields, _ = get(port)
    assert shown[0] == f"HTTP/1.1 {status} Too Many Requests"
    assert shown[1:] == [f"{name}: {fields[name]}" for name in
                         ("Retry-After", "RateLimit-Policy", "RateLimit")]


def test_the_refusal_shown_is_the_one_rex_prints():
    shown = re.search(r"```text\n(rex: refusing.*?)\n```", TEXT, re.S)[1]
    inst = replace(default_config().instances[0], routes=(Route("/", 0, wsgi="shop:app"),))
    assert shown == "rex: " + problem(replace(default_config(), instances=(inst,)), 0)


def test_site_config_opts_wsgi_tests_in_only_as_root():
    text = site_config(free_port(), {"/": "wsgi:app:app"})
    assert ("\nuser: root\n" in text) == (os.geteuid() == 0)
