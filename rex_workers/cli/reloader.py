"""``rex wsgi --reload``: a small process that asks the master to reload when Python files change.

The master is the process that runs ``rex wsgi``; before it binds anything or
installs its signal handlers it forks this watcher, which uses ``watchfiles``
(inotify/FSEvents, with its debounce: a save that writes several files
reloads once) and sends the master SIGHUP on every change to a ``.py`` file.
A reload starts fresh workers that import the edited code, and the old ones
drain only once the new ones are ready (docs/operations.md): no request fails,
and an edit that does not import leaves the old code serving, with the error
in the log.

Kept outside the master's loop on purpose: the master never imports app code
or anything that starts threads, and this process holds no socket. It exits
when its master does (its parent pid changes) and ignores the terminal's
signals; the master's reaping loop collects it like any child.

May: fork once, watch directories, signal its master. May not: import gevent.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from . import CommandError

POLL_MS = 500  # how often the watcher wakes to see whether its master is still there


def start(directories: Sequence[str], master_pid: int) -> int:
    """Fork the watcher of ``directories`` for ``master_pid``; its pid (in the parent)."""
    try:
        import watchfiles  # noqa: F401  (imported here so a missing one fails before fork)
    except ImportError:
        raise CommandError("--reload needs the watchfiles package: pip install watchfiles"
                           ) from None
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = _watch(directories, master_pid)
    except BaseException:  # the child must never return into the master's code
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _watch(directories: Sequence[str], master_pid: int) -> int:
    from watchfiles import PythonFilter, watch

    from ..master.daemon import MasterLog
    from ..shared.proctitle import set_title

    # Ctrl-C and a closed terminal reach the whole process group: the master
    # decides what they mean, and this process follows it out.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    set_title("rex: reload watcher")
    log = MasterLog()
    for changes in watch(*directories, watch_filter=PythonFilter(), rust_timeout=POLL_MS,
                         yield_on_timeout=True, raise_interrupt=False):
        if os.getppid() != master_pid:
            return 0
        if not changes:
            continue
        names = sorted({os.path.relpath(path) for _change, path in changes})
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        log.info(f"reload watcher: {shown} changed: reloading")
        try:
            os.kill(master_pid, signal.SIGHUP)
        except ProcessLookupError:
            return 0
    return 0
