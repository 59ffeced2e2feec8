"""docs/access.md: every YAML example loads, and the documented limits are the code's."""

from __future__ import annotations

import re
from pathlib import Path

import bcrypt
import pytest

from rex_workers.access import basic
from rex_workers.access.forward import MAX_ANSWER
from rex_workers.config.loader import load_config
from rex_workers.config.model import BasicAuth

DOC = Path(__file__).resolve().parent.parent / "docs" / "access.md"
TEXT = DOC.read_text()
EXAMPLES = re.findall(r"```yaml\n(.*?)```", TEXT, re.S)


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("text", EXAMPLES)
def test_example_loads(tmp_path, text):
    (tmp_path / "public").mkdir()
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    (tmp_path / "users.htpasswd").write_text(f"alice:{hashed}\n")
    path = tmp_path / "rex.config.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert any(i.guarded for i in config.instances)


def test_documented_numbers_are_the_code_s():
    assert basic.CACHE_SECONDS == 5 * 60 and "believed for **5 minutes**" in TEXT
    assert basic.FAILURE_BURST == 10 and "may make **10** failed checks" in TEXT
    assert 1 / basic.FAILURE_RATE == 6 and "every **6 seconds**" in TEXT
    assert basic.BCRYPT_MAX == 72 and "first 72" in TEXT
    assert MAX_ANSWER == 1024 * 1024 and "(up to 1 MiB)" in TEXT
    assert f"| `{BasicAuth.__dataclass_fields__['realm'].default}` |" in TEXT
