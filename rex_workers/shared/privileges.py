"""Dropping root: the master binds and reads keys as root, its workers serve as ``user``.

The master keeps root for what needs it: binding privileged ports, reading
certificates and keys that only root may read, signalling its workers,
binding new ports on a reload. Each worker, right after fork, loads its TLS
contexts and then switches to the account (``setgroups``, ``setgid``,
``setuid``, in that order: once the uid is gone it may change neither group)
before it imports a WSGI app or accepts a connection. So an application bug,
or an attacker inside the app, holds an unprivileged process.

Before a generation starts, the master makes the files its workers open
usable for that account (the access and error logs, and the daemon's log the
workers reopen on SIGUSR1): created if missing and given to it. And it
refuses a ``wsgi:`` app that would run as root unless ``user: root`` says so.

May: look accounts up, change this process's ids, chown log files. May not:
import gevent; the decisions (``problem``) are pure.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass

from ..config.model import Config

ROOT = "root"


@dataclass(frozen=True, slots=True)
class Account:
    name: str | None  # None: a bare uid with no passwd entry
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups: the user's, from the group database
    home: str | None = None


def account(user: str, group: str | None = None) -> Account:
    """The ids ``user`` (name or uid) and ``group`` (name, gid, or the user's own) stand for."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise
        entry = None  # a bare uid (a container's): its gid is its group's or its own number
    uid = entry.pw_uid if entry else int(user)
    gid = entry.pw_gid if entry else uid
    if group is not None:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    name = entry.pw_name if entry else None
    groups = tuple(os.getgrouplist(name, gid)) if name else (gid,)
    return Account(name, uid, gid, groups, entry.pw_dir if entry else None)


def problem(config: Config, euid: int) -> str:
    """Why this master may not start ``config`` as user ``euid`` ("" when it may)."""
    if config.user is None:
        if euid == 0 and config.has_wsgi:
            return ("refusing to run wsgi: apps as root: set the user key to the account they "
                    "should run as (user: www-data), or write user: root to run them as root "
                    "on purpose")
        return ""
    try:
        wanted = account(config.user, config.group)
    except KeyError as exc:  # the account was removed since the config was checked
        return f"user/group {exc.args[0]!r} not found on this machine"
    if euid != 0 and (wanted.uid != euid or wanted.gid != os.getegid()):
        return (f"user: {config.user} needs rex to start as root to switch to it (rex runs as "
                f"uid {euid}); start it as root, or remove the user key")
    return ""


def prepare(config: Config, euid: int, master_log: str = "") -> str:
    """The master's side before a generation starts: ``problem``, else the log files handed
    over to the account (when there is one to switch to); "" when all is well."""
    found = problem(config, euid)
    if found or config.user is None or euid != 0:
        return found
    who = account(config.user, config.group)
    if who.uid == 0:
        return ""  # user: root: nothing changes hands
    paths = log_files(config)
    try:
        hand_over([*paths, *([master_log] if master_log else [])], who)
    except OSError as exc:
        return f"cannot give {exc.filename} to user {config.user}: {exc.strerror}"
    # The daemon's log is not checked: workers write it through the descriptors they
    # inherit, and reopen it on SIGUSR1 only if they can (serve/worker.py).
    for path in paths:
        closed = next((d for d in _parents(path) if not _searchable(d, who)), None)
        if closed:
            return (f"user {config.user} cannot reach {path}: {closed} is closed to it "
                    "(chmod o+x, or log somewhere it can reach)")
    return ""


def _parents(path: str) -> list[str]:
    parents, path = [], os.path.dirname(os.path.abspath(path))
    while True:
        parents.append(path)
        if path == os.path.dirname(path):
            return parents[::-1]
        path = os.path.dirname(path)


def _searchable(directory: str, who: Account) -> bool:
    """Whether ``who`` may pass through ``directory`` (its mode bits; ACLs are not read)."""
    st = os.stat(directory)
    if st.st_uid == who.uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in who.groups or st.st_gid == who.gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def hand_over(paths: Iterable[str], who: Account) -> None:
    """Create each file if missing and give it to ``who``: workers open them after the drop."""
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.fchown(fd, who.uid, who.gid)
        finally:
            os.close(fd)


def log_files(config: Config) -> list[str]:
    """The files a worker opens for writing: its logs (not stdout or stderr)."""
    targets = [config.logging.access, config.logging.error]
    return [t for t in targets if t and t not in ("stdout", "stderr")]


def drop(who: Account) -> None:
    """Become ``who`` for good (a worker, after fork); nothing to do if already it."""
    if (os.getuid(), os.geteuid(), os.getgid()) == (who.uid, who.uid, who.gid):
        return
    os.setgroups(list(who.groups))
    os.setgid(who.gid)
    os.setuid(who.uid)  # sets the real, effective and saved uid: root cannot come back
    if who.home:  # what an app sees of "its" user, as after a login
        os.environ.update(HOME=who.home, USER=who.name, LOGNAME=who.name)
