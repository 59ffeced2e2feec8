"""docs/http2.md: every example loads and serves as it says; the figures it gives are the code's.

Also the ``http2`` key's errors, with file and line, as for every key.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import trustme
from conftest import free_port
from h2client import H2Client

from rex_workers.config.loader import ConfigError, load_config
from rex_workers.serve import h2conn

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = (DOCS / "http2.md").read_text()
EXAMPLES = re.findall(r"```yaml\n(.*?)```", PAGE, re.S)


def _support_files(base: Path, ca: trustme.CA) -> None:
    (base / "public").mkdir(exist_ok=True)
    (base / "public" / "index.html").write_text("docs\n")
    (base / "certs").mkdir(exist_ok=True)
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(base / "certs" / "site.crt"))
    cert.private_key_pem.write_to_path(str(base / "certs" / "site.key"))


def test_the_page_has_its_examples():
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("text", EXAMPLES, ids=["tls", "off", "cleartext"])
def test_example_loads(tmp_path, text):
    _support_files(tmp_path, trustme.CA())
    path = tmp_path / "rex.config.yaml"
    path.write_text(text)
    inst = load_config(str(path)).instances[0]
    assert inst.http2 == (False if "http2: false" in text
                          else "cleartext" if "cleartext" in text else True)


def test_tls_example_serves_h2(rex, tmp_path):
    ca = trustme.CA()
    _support_files(tmp_path, ca)
    port = free_port()
    rex.write(EXAMPLES[0].replace("port: 443", f"port: {port}\n      host: 127.0.0.1"))
    rex.start(ports=(port,))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with H2Client(port, context) as c:
        answer = c.get("/index.html")
        assert answer.status == 200 and answer.body == b"docs\n"


def test_protection_figures_are_the_codes():
    table = PAGE[PAGE.index("## Protections"):PAGE.index("## Reloads")]
    assert f"| {h2conn.MAX_STREAMS} (SETTINGS_MAX_CONCURRENT_STREAMS)" in table
    assert f"| {h2conn.TABLE_SIZE} bytes" in table
    assert (f"more than {h2conn.EARLY_RESETS} at once, or more than "
            f"{h2conn.EARLY_RESETS_PER_SECOND} a second for long") in table
    assert (f"more than {h2conn.CONTROL_FRAMES} of them at once, or more than "
            f"{h2conn.CONTROL_FRAMES_PER_SECOND} a second for long") in table
    assert f"{h2conn.STREAM_WINDOW // 1024 + 1} KiB in flight" in table
    assert f"the connection {h2conn.CONNECTION_WINDOW >> 20} MiB" in table


@pytest.mark.parametrize(("value", "tls", "message"), [
    ("yes-please", False, "http2: must be true, false or cleartext"),
    ("cleartext", True, "http2: cleartext is for instances without TLS"),
])
def test_bad_http2_values_name_file_line_and_key(tmp_path, value, tls, message):
    _support_files(tmp_path, trustme.CA())
    extra = "      tls: {cert: ./certs/site.crt, key: ./certs/site.key}\n" if tls else ""
    path = tmp_path / "rex.config.yaml"
    path.write_text(f"server:\n  instances:\n    - port: 8443\n{extra}      http2: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    line = 5 if tls else 4
    assert f"{path}:{line}:" in str(err.value) and message in str(err.value)
