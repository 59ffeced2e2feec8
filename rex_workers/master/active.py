"""The config ``rex load`` recorded, one record per directory the commands run in.

SPEC §2 resolves a command's config as ``-c``, else the config ``rex load``
recorded, else ``./rex.config.yaml``. The last is per directory, so the record
is too: ``rex load`` in project B must not change what ``rex start`` or
``rex stop`` mean in project A when both projects share one ``$REX_HOME``.

One small JSON file per directory under ``$REX_HOME/loaded/`` (named by a hash
of the directory, holding ``dir`` and ``config``), written atomically. No
shared file is read, changed and written back, so two ``rex load``\\ s in two
projects at the same moment cannot lose one of them.

May: read, write and remove those records. May not: print, signal, import gevent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from .registry import atomic_write

__all__ = ["forget", "record", "recorded"]


def recorded(home: str, directory: str) -> str | None:
    """The config ``rex load`` recorded for ``directory``, or None."""
    try:
        with open(_path(home, directory), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None  # none recorded (or unreadable: as if none, `rex load` rewrites it)
    if not isinstance(data, dict) or data.get("dir") != directory:
        return None  # another directory's record under the same hash: never seen, but cheap
    config = data.get("config")
    return config if isinstance(config, str) and config else None


def record(home: str, directory: str, config: str) -> None:
    os.makedirs(os.path.join(home, "loaded"), exist_ok=True)
    atomic_write(_path(home, directory), json.dumps({"dir": directory, "config": config}))


def forget(home: str, directory: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(home, directory))


def _path(home: str, directory: str) -> str:
    name = hashlib.sha256(directory.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(home, "loaded", f"{name}.json")
