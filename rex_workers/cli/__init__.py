"""The CLI's commands that are more than a few lines: one-liners, the deep check, usage help.

``rex.py`` keeps the usage string and the dispatch; these modules do the work
and report failures as ``CommandError``, which ``rex.py`` prints as
``rex: <line>`` and exits with ``code``. Nothing here imports gevent or
``rex`` itself (imports go one way: rex.py -> rex_workers).
"""

from __future__ import annotations

EXIT_FAILURE, EXIT_USAGE = 1, 2  # the same numbers as rex.py's


class CommandError(Exception):
    """A failure the user can act on: one line (or several), and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code
