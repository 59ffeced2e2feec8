"""Starting without a config: ``rex --init`` writes the starter files; with no file, a built-in.

The starter config and page ship inside the package as ``rex_conf``
(``conf/`` in the source tree), so a wheel install has them too. With no
config file at all (``rex start`` in an empty directory), Rex serves its
welcome page on port 8000 (docs/configuration.md) and says so; the master
watches for ``./rex.config.yaml`` and loads it once it appears.
"""

from __future__ import annotations

import os
from importlib import resources

from ..config.model import Config
from . import CommandError


def init(config_name: str, force: bool) -> int:
    """Write ./<config_name> and ./public/index.html; refuse to overwrite unless ``force``."""
    conf = resources.files("rex_conf")
    targets = {config_name: conf / "rex.config.yaml",
               os.path.join("public", "index.html"): conf / "public" / "index.html"}
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not force:
        raise CommandError(f"{existing[0]} already exists (use --init --force to overwrite)")
    os.makedirs("public", exist_ok=True)
    for target, source in targets.items():
        with open(target, "wb") as f:
            f.write(source.read_bytes())
        print(f"wrote {target}")
    print("start it with: rex start")
    return 0


def builtin_config(looked_for: str) -> Config:
    """The config Rex runs with no file at ``looked_for``; prints what that means."""
    from ..config.loader import DEFAULT_PORT, default_config

    print(f"no config file ({looked_for}): serving the welcome page on port {DEFAULT_PORT}; "
          "`rex --init` writes a starter config, which Rex then loads", flush=True)
    return default_config()
