"""docs/compression.md: every YAML example loads, and the documented defaults are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rex_workers.config.loader import load_config
from rex_workers.config.model import COMPRESSIBLE_TYPES, Compression

DOC = Path(__file__).resolve().parent.parent / "docs" / "compression.md"
TEXT = DOC.read_text()
EXAMPLES = re.findall(r"```yaml\n(.*?)```", TEXT, re.S)


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("text", EXAMPLES)
def test_example_loads_with_compression_on(tmp_path, text):
    (tmp_path / "public").mkdir()
    path = tmp_path / "rex.config.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.compress is not None and all(i.compress for i in config.instances)


def test_documented_defaults_are_the_model_s():
    d = Compression()
    assert f"| `compress.algorithms` | `[{', '.join(d.algorithms)}]` |" in TEXT
    assert f"| `compress.min_length` | `{d.min_length}` |" in TEXT
    assert f"| `compress.level` | `{{gzip: {d.gzip_level}, br: {d.br_level}}}` |" in TEXT
    listed = re.search(r"The default types are .*?: (.*?)\. Images", TEXT, re.S)[1]
    assert re.findall(r"`([^`]+)`", listed) == list(COMPRESSIBLE_TYPES)

