"""``rex proxy``, ``rex serve`` and ``rex wsgi``: a config built from the command line.

Each one-liner writes the config it stands for as an ordinary YAML file,
``$REX_HOME/run/<pid>.<command>.yaml``, validates it with the loader like any
file, and runs a foreground master on it (``rex.py`` does that part, as for
``rex start -f -c``). Going through a real file is deliberate: a reload
(SIGHUP, ``rex reload``, ``--reload``) re-reads it like any config, ``rex
status`` shows its path, ``rex config`` and ``rex check`` take it, and it can
be copied to make the one-liner permanent. The file is removed when the
master exits; one left by a master killed with SIGKILL is removed by the
next one-liner once its pid is gone.

May: turn arguments into a config document, write and remove that file,
word errors in terms of the flags. May not: bind, fork (``reloader.py``
forks the watcher), or import gevent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..config.model import Config
from . import EXIT_USAGE, CommandError

KINDS = ("proxy", "serve", "wsgi")
LISTEN = {"proxy": "--from", "serve": "--listen", "wsgi": "--bind"}  # each one's address flag
_ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)")
_ERROR = re.compile(r"[^\n]*?:\d+: (?P<path>[\w.-]+): (?P<message>.*)")


@dataclass(frozen=True)
class OneLiner:
    """The arguments of one one-liner, as typed values (from ``from_args``)."""

    kind: str  # "proxy", "serve" or "wsgi"
    host: str | None  # None: the config's default (every interface)
    port: int
    upstreams: tuple[str, ...] = ()  # proxy: --to, in order
    directory: str = ""  # serve: absolute
    browse: bool = False  # serve: directory listings
    app: str = ""  # wsgi: module:app
    statics: tuple[tuple[str, str], ...] = ()  # wsgi: (url prefix, absolute directory)
    reload: bool = False  # wsgi: watch the Python files
    user: str | None = None  # wsgi: --user, the workers' account
    workers: int | None = None
    argv: tuple[str, ...] = field(default=(), compare=False)  # for the file's comment


def parse_address(text: str, flag: str) -> tuple[str | None, int]:
    """``:8080``, ``8080``, ``HOST:8080`` or ``[::1]:8080`` as (host or None, port)."""
    text = text.strip()
    match = _ADDRESS.fullmatch(text if ":" in text else f":{text}")
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise CommandError(f"{flag} expects :PORT, HOST:PORT or [IPv6]:PORT (port 1-65535), "
                           f"not {text!r}", EXIT_USAGE)
    return (match["v6"] or match["host"] or None), port


def parse_static(text: str) -> tuple[str, str]:
    """``/static=./static`` as ("/static", absolute directory)."""
    prefix, equals, directory = text.partition("=")
    if not equals or not prefix.startswith("/") or not directory:
        raise CommandError(f"--static expects /PREFIX=DIR (like /static=./static), not {text!r}",
                           EXIT_USAGE)
    return prefix.rstrip("/") or "/", os.path.abspath(os.path.expanduser(directory))


def from_args(kind: str, args: dict, workers: int | None, argv: list[str]) -> OneLiner:
    """docopt's dict for ``kind`` as a OneLiner; bad values are usage errors (exit 2)."""
    host, port = parse_address(args[LISTEN[kind]], LISTEN[kind])
    return OneLiner(
        kind=kind, host=host, port=port, workers=workers, argv=tuple(argv),
        upstreams=tuple(args["--to"] or ()),
        directory=os.path.abspath(args["<dir>"] or ".") if kind == "serve" else "",
        browse=bool(args["--browse"]),
        app=args["<app>"] or "",
        statics=tuple(parse_static(s) for s in args["--static"] or ()),
        reload=bool(args["--reload"]), user=args.get("--user"))


# ------------------------------------------------------------------ the config


def document(one: OneLiner) -> tuple[dict, dict[str, str]]:
    """The config document, and which argument each of its dotted paths came from."""
    listen = LISTEN[one.kind]
    site: dict = {"port": one.port}
    if one.host:
        site["host"] = one.host
    doc: dict = {"server": {"instances": [site]}}
    where = {"server.instances.0.port": listen, "server.instances.0.host": listen, "workers": "-w"}
    if one.kind == "proxy":
        many = len(one.upstreams) > 1
        site["routes"] = [{"path": "/", "destination": list(one.upstreams) if many
                           else one.upstreams[0]}]
        where["server.instances.0.routes.0.destination"] = "--to"
    elif one.kind == "serve":
        site["public"] = one.directory
        if one.browse:
            site["static"] = {"listing": True}
        where["server.instances.0.public"] = "DIR"
    else:
        routes = [{"path": prefix, "destination": f"static:{directory}"}
                  for prefix, directory in one.statics]
        for n in range(len(routes)):
            where[f"server.instances.0.routes.{n}"] = "--static"
        where[f"server.instances.0.routes.{len(routes)}"] = "app"
        site["routes"] = [*routes, {"path": "/", "destination": f"wsgi:{one.app}"}]
        # gunicorn's habit: the app is imported from the directory rex runs in.
        doc["pythonpath"] = [os.getcwd()]
        if one.user:
            doc["user"] = one.user
            where["user"] = "--user"
    if one.workers:
        doc["workers"] = one.workers
    return doc, where


def config_path(run_dir: str, one: OneLiner, pid: int) -> str:
    return os.path.join(run_dir, f"{pid}.{one.kind}.yaml")


def write(path: str, one: OneLiner) -> None:
    import yaml

    doc, _ = document(one)
    command = shlex.join(["rex", *one.argv])
    text = (f"# Written by `{command}` (pid {os.getpid()});\n"
            "# removed when it stops. Copy it to keep this setup as a config file.\n"
            + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def validate(path: str, one: OneLiner) -> Config:
    """Load the written file; its errors are said in terms of the arguments (exit 2)."""
    from ..config.loader import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _, where = document(one)
        raise CommandError("\n".join(_in_flags(line, where) for line in exc.errors),
                           EXIT_USAGE) from None


def _in_flags(line: str, where: dict[str, str]) -> str:
    """``file:7: server.instances.0.routes.0.destination: bad`` -> ``--to: bad``."""
    match = _ERROR.fullmatch(line)
    if match:
        path = match["path"]
        for prefix, flag in where.items():
            if path == prefix or path.startswith(prefix + "."):
                return f"{flag}: {match['message']}"
    return line


def sweep(run_dir: str) -> None:
    """Remove one-liner configs whose process is gone (a master killed with SIGKILL)."""
    for name in os.listdir(run_dir):
        pid, _, rest = name.partition(".")
        if not (pid.isdigit() and rest in {f"{k}.yaml" for k in KINDS}):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(run_dir, name))
        except PermissionError:
            pass  # alive, someone else's: not ours to remove


@contextlib.contextmanager
def prepared(one: OneLiner, run_dir: str) -> Iterator[tuple[str, Config]]:
    """Write and validate the config of ``one``; yield (path, config); remove it after."""
    sweep(run_dir)
    path = config_path(run_dir, one, os.getpid())
    write(path, one)
    try:
        yield path, validate(path, one)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def describe(one: OneLiner, urls: list[str], path: str) -> str:
    """The lines printed before the master starts: what this one-liner is going to do."""
    where = ", ".join(urls)
    if one.kind == "proxy":
        what = f"{where} -> {', '.join(one.upstreams)}"
        what += " (round robin)" if len(one.upstreams) > 1 else ""
    elif one.kind == "serve":
        what = f"{one.directory} at {where}"
        what += " (directory listings on)" if one.browse else ""
    else:
        what = f"wsgi:{one.app} at {where}"
        what += "".join(f", {prefix} from {directory}" for prefix, directory in one.statics)
        if one.reload:
            what += f"; reloads when a .py file under {os.getcwd()} changes"
    return f"rex {one.kind}: {what}\nrex {one.kind}: config {path}"


def run(kind: str, args: dict, workers: int | None, argv: list[str],
        run_dir: Callable[[], str], start: Callable[[str], int]) -> int:
    """The whole one-liner: write the config, say what it does, ``start(path)`` in the foreground.

    ``start`` is ``rex start -f -c PATH`` (rex.py's): this process becomes the
    master, so its pid names the file and ``--reload``'s watcher signals it.
    """
    from ..master.supervise import urls
    from . import reloader

    one = from_args(kind, args, workers, argv)
    with prepared(one, run_dir()) as (path, config):
        print(describe(one, urls(config), path), flush=True)
        if one.reload:
            reloader.start(config.pythonpath, os.getpid())
        return start(path)
