"""``rex config``: the effective config, every default filled in, as YAML.

What Rex will do with a file (or with no file at all), in the file's own
shape: ``config/dump.py`` builds the document, this prints it. The output
loads back into the same config, so it can be saved and edited.
"""

from __future__ import annotations

from collections.abc import Callable

from . import EXIT_USAGE, CommandError


def run(path: str | None, looked_for: Callable[[], str]) -> int:
    """Print the effective config of ``path`` (None: the built-in one, as no file was found)."""
    import yaml

    from ..config.dump import dump
    from ..config.loader import ConfigError, default_config, load_config

    try:
        config = load_config(path) if path else default_config()
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if path:
        print(f"# The effective config of {config.path}, every default filled in.")
    else:
        print(f"# No config file ({looked_for()}): the built-in config, which shows the "
              "welcome page.")
    print(yaml.safe_dump(dump(config), sort_keys=False, default_flow_style=False), end="")
    return 0
