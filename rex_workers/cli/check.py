"""``rex check``: everything that can be known about a config before it serves.

Beyond the loader's validation (every key, every value, file:line errors),
it loads each instance's certificate with its key, as the master does before
a start or a reload (so a key that does not belong to its certificate fails
here, not at ``rex start``), and imports every ``wsgi:`` app in a child
process set up like a worker (gevent's monkey-patching first, then the
config's ``pythonpath``), so the shipped systemd ``ExecReload`` (``rex check``,
then SIGHUP) refuses an app that does not import. Upstream host names that do
not resolve are warnings only: a name may resolve later (a container not yet
started), and Rex resolves when it connects.

Exit codes, like ``rex start``'s: 2 for a config that does not validate, 1
for one that validates but could not serve (certificate, import), 0 otherwise
(warnings included). ``--json`` prints one document with the same verdict.

May: read certificates, fork one child that imports app code, resolve names,
print. May not: bind, or import gevent in this process (only the child does).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.model import Config
from ..master.supervise import boot_limit, describe_exit
from ..shared.tls import certificate_problem
from . import EXIT_FAILURE, EXIT_USAGE, CommandError

RESOLVE_TIMEOUT = 3.0  # seconds all name look-ups together may take before they are warnings


@dataclass
class Report:
    config: str  # the file checked; "" for the built-in config (no file)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    code: int = 0
    summary: str = ""

    def as_json(self) -> str:
        return json.dumps({"config": self.config or None, "ok": self.code == 0,
                           "exit_code": self.code, "errors": self.errors,
                           "warnings": self.warnings, "summary": self.summary}, indent=2)


def check(path: str | None) -> Report:
    """The report on ``path`` (None: the built-in config Rex runs without a file)."""
    from ..config.loader import DEFAULT_PORT, ConfigError, default_config, load_config

    report = Report(path or "")
    try:
        config = load_config(path) if path else default_config()
    except ConfigError as exc:
        report.errors, report.code = exc.errors, EXIT_USAGE
        return report
    report.errors += [p for p in map(certificate_problem, config.instances) if p]
    if config.has_wsgi:
        report.errors += import_problems(config)
    if report.errors:
        report.code = EXIT_FAILURE
    report.warnings = unresolved(config)
    routes = sum(len(i.routes) for i in config.instances)
    if report.errors:
        report.summary = f"{len(report.errors)} problem(s)"
    elif path:
        report.summary = (f"ok ({len(config.instances)} instance(s), {routes} route(s), "
                          f"{config.workers} worker(s))")
    else:
        report.summary = (f"no config file: `rex start` serves the welcome page on port "
                          f"{DEFAULT_PORT} (`rex --init` writes a starter config)")
    return report


def run(path: str | None, as_json: bool, looked_for: Callable[[], str]) -> int:
    """``rex check``: print the report; CommandError (its lines, its code) when it failed."""
    report = check(path)
    if as_json:
        print(report.as_json())
        return report.code
    for warning in report.warnings:
        print(f"rex: warning: {warning}", file=sys.stderr)
    if report.code:
        raise CommandError("\n".join(report.errors), report.code)
    print(f"{path or looked_for()}: {report.summary}")  # where the file was looked for
    return 0


# ------------------------------------------------------------------ WSGI apps


def import_problems(config: Config) -> list[str]:
    """Import every ``wsgi:`` app of ``config`` in a child process; what failed, one line each."""
    specs = list(dict.fromkeys(r.wsgi for i in config.instances for r in i.routes if r.wsgi))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _import_child(config, specs, write_end)  # never returns
    os.close(write_end)
    limit = boot_limit(config)
    try:
        said, finished = _read_until(read_end, time.monotonic() + limit)
    finally:
        os.close(read_end)
    if not finished:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    problems = [line for line in said.decode("utf-8", "replace").splitlines() if line]
    if not finished:
        problems.append(f"importing the WSGI apps took longer than {limit:g}s "
                        f"(a worker would be given up too)")
    elif status and not problems:
        problems.append(f"the process importing the WSGI apps died ({describe_exit(status)})")
    return problems


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to ``fd`` until its writer closes it (True) or the deadline (False)."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return data, False
        chunk = os.read(fd, 65536)
        if not chunk:
            return data, True
        data += chunk


def _import_child(config: Config, specs: list[str], out: int) -> None:
    """In the child: set up like a worker, import each app, write one line per failure."""
    code = 0
    try:
        os.dup2(2, 1)  # what the app prints must not mix into `rex check --json`
        from gevent import monkey

        monkey.patch_all()  # as in a worker: before the app's modules are imported

        from ..wsgi.load import extend_sys_path, load_route_app

        extend_sys_path(config)
        lines = []
        for spec in specs:
            try:
                load_route_app(spec)
            except Exception as exc:  # load_route_app words it: "wsgi:x:app: Error: why"
                lines.append(f"{exc}\n")
        os.write(out, "".join(lines).encode())
    except BaseException:  # the child must never return into the CLI
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


# ------------------------------------------------------------------ upstream names


def unresolved(config: Config, timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """A warning for each upstream host name that does not resolve (within ``timeout``)."""
    where: dict[tuple[str, int], str] = {}
    for inst in config.instances:
        for route in inst.routes:
            for up in route.upstreams:
                where.setdefault((up.host, up.port), f"route {route.path} of instance "
                                                     f"{inst.index}")
    for up in config.upstream:
        where.setdefault((up.host, up.port), "the global upstream pool")
    names = {address: text for address, text in where.items() if not _is_ip(address[0])}
    results: dict[tuple[str, int], str] = {}
    # Daemon threads: getaddrinfo cannot be cancelled, and a hung resolver must
    # not keep `rex check` from exiting once its timeout has passed.
    threads = [threading.Thread(target=_resolve, args=(address, results), daemon=True)
               for address in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    warnings = []
    for (host, port), text in names.items():
        failure = results.get((host, port), f"no answer within {timeout:g}s")
        if failure:
            warnings.append(f"upstream host {host} does not resolve ({text}): {failure}")
    return warnings


def _resolve(address: tuple[str, int], results: dict) -> None:
    try:
        socket.getaddrinfo(*address, type=socket.SOCK_STREAM)
        results[address] = ""
    except OSError as exc:  # socket.gaierror: the resolver's own words
        results[address] = exc.strerror or str(exc)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
