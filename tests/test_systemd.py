"""systemd: the sd_notify(3) handshake of a real master, and the unit file Rex ships.

The test plays systemd's part: it binds an ``AF_UNIX`` datagram socket, starts
``rex start -f`` with ``NOTIFY_SOCKET`` pointing at it and reads what arrives,
with the sender's credentials (``SO_PASSCRED``), because ``NotifyAccess=main``
makes systemd drop every message that does not come from the main pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, free_port, port_open, site_config, wait_for
from test_master import BROKEN_APP, get

import rex as rex_cli
from rex_workers.config.model import Config

UNIT = ROOT / "conf" / "systemd" / "rex.service"
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: ``messages`` holds (sender pid, {key: value})."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.dir = ""
        if abstract:
            name = f"rex-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name  # the '@' form systemd uses for abstract sockets
        else:
            # A short directory: a socket path must fit in sun_path (108 bytes).
            self.dir = tempfile.mkdtemp(prefix="rexn")
            self.env = os.path.join(self.dir, "notify")
            self.sock.bind(self.env)
        self.messages: list[tuple[int, dict[str, str]]] = []

    def receive(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except (TimeoutError, BlockingIOError):
            return None
        pid = next(UCRED.unpack(body[:UCRED.size])[0] for level, kind, body in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        self.messages.append((pid, fields))
        return pid, fields

    def expect(self, key: str, rex, timeout: float = 20.0) -> dict[str, str]:
        """The next message; it must carry ``key`` (``READY``, ``RELOADING``, ``STOPPING``).

        A master that exits without sending it fails the test at once, with its output.
        """
        deadline = time.monotonic() + timeout
        while (got := self.receive(0.1)) is None:
            exited = rex.proc.poll() is not None
            assert not exited, f"rex exited before {key}=1:\n{rex.output()}"
            assert time.monotonic() < deadline, f"no {key}=1 within {timeout}s: {self.messages}"
        assert got[1].get(key) == "1", f"expected {key}=1, got {got[1]}"
        return got[1]

    def quiet(self) -> bool:
        return self.receive(0.0) is None

    def close(self) -> None:
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify(request):
    s = NotifySocket(abstract=request.param)
    yield s
    s.close()


def start_notified(rex, notify: NotifySocket) -> None:
    """``rex start -f`` as systemd runs it; the ``rex`` fixture stops it by pid afterwards."""
    rex._out = open(rex.log, "wb")  # noqa: SIM115 - closed by the fixture's stop()
    rex.proc = subprocess.Popen(
        [sys.executable, "-m", "rex", "start", "-f", "-c", str(rex.config)],
        cwd=rex.workdir, env={**rex.env, "NOTIFY_SOCKET": notify.env},
        stdout=rex._out, stderr=subprocess.STDOUT)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_ready_reload_and_stop_are_notified_by_the_main_pid(rex, upstream, notify):
    up = upstream()
    port = free_port()
    rex.write(site_config(port, {"/": up.url}, "workers: 2\nlogging: {access: off}\n"))
    start_notified(rex, notify)
    ready = notify.expect("READY", rex)  # nothing is sent before READY=1
    # READY=1 means serving: every worker accepts now, and systemd may start dependants.
    assert port_open(port) and get(f"http://127.0.0.1:{port}/")[0] == 200
    assert ready["MAINPID"] == str(rex.pid)
    assert ready["STATUS"] == "serving generation 1 with 2 worker(s)"
    assert rex.status()["state"] == "serving" and len(rex.status()["workers"]) == 2

    before = monotonic_usec()
    rex.signal(signal.SIGHUP)  # what ExecReload=/bin/kill -HUP $MAINPID does
    reloading = notify.expect("RELOADING", rex)
    # Type=notify-reload (systemd 253+) needs the CLOCK_MONOTONIC time of the reload.
    assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
    assert reloading["STATUS"] == "reloading: starting generation 2"
    again = notify.expect("READY", rex)
    assert again["STATUS"] == "serving generation 2 with 2 worker(s)"
    assert get(f"http://127.0.0.1:{port}/")[0] == 200

    rex.signal(signal.SIGTERM)  # systemctl stop (KillSignal=SIGTERM)
    stopping = notify.expect("STOPPING", rex)
    assert stopping["STATUS"] == "draining"
    assert rex.proc.wait(30) == 0
    assert notify.quiet()
    # NotifyAccess=main: systemd ignores any other sender, so every message is the master's.
    assert {pid for pid, _ in notify.messages} == {rex.pid}


def test_a_refused_reload_sends_nothing_and_a_failed_one_ends_with_ready(rex, upstream):
    notify = NotifySocket()
    try:
        up = upstream()
        port = free_port()
        (rex.workdir / "broken_app.py").write_text(BROKEN_APP)
        good = site_config(port, {"/": up.url}, "workers: 1\nlogging: {access: off}\n")
        rex.write(good)
        start_notified(rex, notify)
        notify.expect("READY", rex)
        # Invalid YAML: refused before anything starts, systemd's state stays "active".
        rex.write(good + "bogus_key: 1\n")
        rex.signal(signal.SIGHUP)
        wait_for(lambda: rex.status()["reloads"]["failed"] >= 1, what="the refused reload")
        assert notify.quiet()
        # Valid, but its workers cannot boot: RELOADING=1 must still be closed by READY=1,
        # or systemd would show the unit as "reloading" until it gives up on it.
        rex.write(good.replace("      routes:\n", "      routes:\n        - path: /app\n"
                                                  "          destination: wsgi:broken_app:app\n"))
        rex.signal(signal.SIGHUP)
        notify.expect("RELOADING", rex)
        ready = notify.expect("READY", rex)
        assert ready["STATUS"] == "serving generation 1 with 1 worker(s) (last reload failed)"
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
    finally:
        notify.close()


# ---------------------------------------------------------------- the shipped unit file


def unit_entries(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in file order; systemd allows a key more than once."""
    entries: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        entries.setdefault((section, key.strip()), []).append(value.strip())
    return entries


def test_unit_file_says_what_rex_does():
    entries = unit_entries(UNIT.read_text())

    def one(key: str, section: str = "Service") -> str:
        (value,) = entries[(section, key)]
        return value

    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert one("KillSignal") == "SIGTERM"  # graceful stop; INT/QUIT would cut connections
    assert one("KillMode") == "mixed"  # TERM to the master only: it drains its workers
    # systemd's SIGKILL must come after Rex's own deadline for a default graceful stop.
    default = Config(path="", digest="", instances=()).graceful_timeout
    assert int(one("TimeoutStopSec")) > default + rex_cli.KILL_MARGIN
    assert one("RestartPreventExitStatus") == str(rex_cli.EXIT_USAGE)  # a bad config
    assert entries[("Service", "ExecReload")][-1] == "/bin/kill -HUP $MAINPID"
    assert "CAP_NET_BIND_SERVICE" in one("AmbientCapabilities")
    assert "AF_UNIX" in one("RestrictAddressFamilies")  # NOTIFY_SOCKET is a unix socket
    assert one("WantedBy", "Install") == "multi-user.target"
    # Every rex command line in it is one the CLI accepts, with the meaning intended.
    from docopt import docopt

    start = docopt(rex_cli.__doc__, argv=one("ExecStart").split()[1:])
    assert start["start"] and start["--foreground"]
    assert start["--config"] == "/etc/rex/rex.config.yaml"
    check = docopt(rex_cli.__doc__, argv=entries[("Service", "ExecReload")][0].split()[1:])
    assert check["check"] and check["<config>"] == start["--config"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart's program exists: point it at this environment's rex.
    program = shutil.which("rex") or str(Path(sys.executable).with_name("rex"))
    if not os.access(program, os.X_OK):
        pytest.skip("no rex console script installed in this environment")
    unit = tmp_path / "rex.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/rex", os.path.realpath(program)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit code 0): any output fails.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_unit_ships_with_the_package():
    from importlib import resources

    shipped = resources.files("rex_conf") / "systemd" / "rex.service"
    assert shipped.read_text() == UNIT.read_text()
