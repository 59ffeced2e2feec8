"""Process titles: what ``ps`` and ``top`` show for the master and each worker.

Here rather than with the master or the workers because both set one: the
master when it starts, each worker right after the fork and again when it
drains. May: call ``setproctitle`` when it is installed. May not: import
gevent or know what a master or a worker is.
"""

from __future__ import annotations


def set_title(title: str) -> None:
    """What ps and top show (``rex: master [...]``, ``rex: worker 2 [gen 3]``)."""
    try:
        import setproctitle
    except ImportError:
        return  # process titles are cosmetic
    setproctitle.setproctitle(title)
