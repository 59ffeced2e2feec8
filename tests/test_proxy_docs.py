"""docs/proxying.md: every YAML example loads, and the documented defaults are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rex_workers.config.loader import load_config
from rex_workers.config.model import Limits, Timeouts

DOC = Path(__file__).resolve().parent.parent / "docs" / "proxying.md"
EXAMPLES = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("text", EXAMPLES)
def test_example_loads(tmp_path, text):
    (tmp_path / "logs").mkdir()
    path = tmp_path / "rex.config.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.instances


SIZES = {8 * 1024: "8k", 16 * 1024: "16k", 1024**3: "1g"}


@pytest.mark.parametrize(("key", "value"), [
    *((f"timeouts.{name}", f"{getattr(Timeouts(), name):g}")
      for name in ("connect", "read", "header", "idle")),
    ("limits.header_bytes", SIZES[Limits().header_bytes]),
    ("limits.request_line_bytes", SIZES[Limits().request_line_bytes]),
    ("limits.header_fields", str(Limits().header_fields)),
    ("limits.field_bytes", SIZES[Limits().field_bytes]),
    ("limits.body_bytes", SIZES[Limits().body_bytes]),
    ("limits.connections", str(Limits().connections)),
    ("limits.min_rate", str(Limits().min_rate)),
])
def test_documented_defaults_are_the_model_s(key, value):
    assert f"| `{key}` | `{value}` |" in DOC.read_text()
