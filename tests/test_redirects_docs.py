"""docs/headers.md and docs/redirects.md: every example loads, every recipe answers as shown.

A recipe is a YAML block followed by a ``text`` block of ``GET host path -> status
location`` lines; each runs on a real master (its port replaced by a free one).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme
from conftest import free_port, send_request

from rex_workers.config.loader import load_config

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ("headers.md", "redirects.md")
EXAMPLES = [(page, block) for page in PAGES
            for block in re.findall(r"```yaml\n(.*?)```", (DOCS / page).read_text(), re.S)]
RECIPES = re.findall(r"```yaml\n((?:(?!```).)*)```\n\n```text\n(.*?)```",
                     (DOCS / "redirects.md").read_text(), re.S)


def _support_files(base: Path) -> None:
    (base / "public").mkdir(exist_ok=True)
    (base / "errors").mkdir(exist_ok=True)
    for name in ("404.html", "502.html", "5xx.html", "api-down.json"):
        (base / "errors" / name).write_text("page\n")
    (base / "certs").mkdir(exist_ok=True)
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(base / "certs" / "site.crt"))
    cert.private_key_pem.write_to_path(str(base / "certs" / "site.key"))


def test_the_pages_have_examples_and_recipes():
    assert len(EXAMPLES) >= 8 and len(RECIPES) == 4


@pytest.mark.parametrize(("page", "text"), EXAMPLES)
def test_example_loads(tmp_path, page, text):
    _support_files(tmp_path)
    path = tmp_path / "rex.config.yaml"
    path.write_text(text)
    assert load_config(str(path)).instances


@pytest.mark.parametrize(("config", "requests"), RECIPES, ids=["www", "https", "moved", "slash"])
def test_recipe(rex, config, requests):
    port = free_port()
    rex.write(config.replace("port: 8080", f"port: {port}"))
    rex.start(ports=(port,))
    for line in requests.strip().splitlines():
        match = re.fullmatch(r"GET (\S+) (\S+) -> (\d{3}) (\S+)", line)
        assert match, line
        host, path, status, location = match.groups()
        reply = send_request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                                   "Connection: close\r\n\r\n".encode())
        assert (reply.status, reply.headers.get("location")) == (int(status), location), line
