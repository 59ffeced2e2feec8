"""Each CLI verb run as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest
from conftest import ROOT, Rex, alive, free_port, port_open, site_config, wait_for
from test_master import fetch_in_thread, slow_upstream


def test_version(rex):
    result = rex.cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("rex ")


def test_usage_error_exits_2(rex):
    result = rex.cli("frobnicate")
    assert result.returncode == 2
    assert "Usage:" in result.stderr


def test_usage_errors_say_what_was_wrong_and_guess(rex):
    cases = {
        ("statsu",): "rex: unknown command 'statsu' (did you mean status?)",
        ("start", "--foregroud"): "rex: unknown option --foregroud for `rex start` "
                                  "(did you mean --foreground?)",
        ("check", "--browse"): "rex: unknown option --browse for `rex check`",
        ("proxy", "--from", ":8080"): "rex: wrong arguments for `rex proxy`",
        ("proxy", "--to", "x", "--from"): "rex: --from requires argument",
    }
    for argv, first_line in cases.items():
        result = rex.cli(*argv)
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and lines[0] == first_line, result.stderr
        assert "unmatched" not in result.stderr and lines[1] == "Usage:"
        if argv[0] != "statsu":  # the usage of that command only
            assert all(line.startswith(f"  rex {argv[0]} ") for line in lines[2:]), lines
    assert len(rex.cli("statsu").stderr.splitlines()) > 10  # every command's usage


def test_start_without_any_config_serves_the_welcome_page_then_the_new_file(rex):
    """docs/configuration.md: with no config file, the welcome page on port 8000; a
    config written afterwards (`rex --init`) is picked up by the running master."""
    import socket

    with socket.socket() as probe:
        # As Rex binds: a connection of an earlier test in TIME_WAIT does not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", 8000))
        except OSError:
            pytest.skip("port 8000 is taken on this machine")
    assert rex.cli("check").stdout.strip() == (
        f"{rex.config}: no config file: `rex start` serves the welcome page on port 8000 "
        "(`rex --init` writes a starter config)")
    assert rex.cli("config").stdout.startswith(f"# No config file ({rex.config})")
    # Its first line says "serving the welcome page" before the master has bound: wait
    # for the port itself.
    rex.launch("start", "-f", ports=(8000,))
    assert rex.output().startswith(f"no config file ({rex.config}): serving the welcome page "
                                   "on port 8000; `rex --init` writes a starter config")
    with urllib.request.urlopen("http://127.0.0.1:8000/", timeout=10) as resp:
        assert b"Welcome to Rex" in resp.read()
    # The status file follows within a heartbeat of the workers' being ready.
    status = wait_for(lambda: (out := rex.cli("status").stdout) and
                      f"master {rex.pid}  serving" in out and out, what="status: serving")
    assert "config (none)" in status
    assert rex.cli("--init").returncode == 0
    wait_for(lambda: "reload (config file changed): starting generation 2" in rex.output(),
             timeout=15, what="the new file to be loaded")
    wait_for(lambda: b"Rex is serving this folder" in urllib.request.urlopen(
        "http://127.0.0.1:8000/", timeout=10).read(), timeout=15, what="the starter page")


def test_python_dash_m_and_console_script_agree(rex):
    result = subprocess.run([sys.executable, "-c", "import rex; print(rex.__doc__)"],
                            capture_output=True, text=True, env=rex.env, check=True)
    assert "rex start [-c <config>] [-f] [-w N]" in result.stdout


def test_init_writes_a_config_that_serves(rex):
    result = rex.cli("--init")
    assert result.returncode == 0, result.stderr
    assert (rex.workdir / "rex.config.yaml").exists()
    assert (rex.workdir / "public" / "index.html").exists()
    again = rex.cli("--init")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert rex.cli("--init", "--force").returncode == 0
    # The starter listens on 8000; run it on a free port to keep tests independent.
    port = free_port()
    text = (rex.workdir / "rex.config.yaml").read_text().replace("port: 8000", f"port: {port}")
    (rex.workdir / "rex.config.yaml").write_text(text)
    assert rex.cli("check").returncode == 0
    rex.start("-w", "1", ports=(port,))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as resp:
        assert resp.status == 200
        assert b"Rex is serving this folder" in resp.read()


def test_check_good_and_bad(rex):
    rex.write("""\
        server:
          instances:
            - port: 8080
              routes:
                - path: /api
                  destination: http://localhost:3000
        workers: 2
    """)
    ok = rex.cli("check", str(rex.config))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    assert rex.cli("test", "-p", str(rex.config)).returncode == 0
    rex.write("""\
        server:
          instances:
            - port: 8080
              rootes: []
        workers: -1
    """)
    bad = rex.cli("check", str(rex.config))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2, bad.stderr
    # Every error line carries the same prefix, one line or many.
    assert lines[0].startswith(f"rex: {rex.config}:4: server.instances.0.rootes: ")
    assert "did you mean routes?" in lines[0]
    assert lines[1].startswith(f"rex: {rex.config}:5: workers: ")
    assert "Traceback" not in bad.stderr


def test_load_and_reset_choose_this_directory_s_active_config(rex, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("server:\n  instances:\n    - port: 8123\n")
    elsewhere = Rex(tmp_path / "elsewhere", rex.home)  # another project, the same REX_HOME
    elsewhere.workdir.mkdir()
    elsewhere.write("server:\n  instances:\n    - port: 8124\n")
    result = rex.cli("load", str(other))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"active config: {other}"  # no master runs: only recorded
    check = rex.cli("check")
    assert check.returncode == 0 and check.stdout.startswith(f"{other}: ok")
    there = elsewhere.cli("check")  # `rex load` here changed nothing there
    assert there.returncode == 0 and there.stdout.startswith(f"{elsewhere.config}: ok")
    assert rex.cli("reset").returncode == 0
    back = rex.cli("check").stdout  # ./rex.config.yaml again, which does not exist
    assert str(rex.config) in back and "no config file" in back


def test_two_daemonized_masters_status_usr1_and_stop(rex, upstream, daemons):
    """`rex start` daemonizes and prints the URLs; status lists both; stop -p picks one;
    USR1 reopens the server log; `rex stop` waits for an in-flight request."""
    slow = slow_upstream(upstream)
    configs = {}
    for name, workers in (("a", 2), ("b", 1)):
        port = free_port()
        path = rex.workdir / f"{name}.yaml"
        path.write_text(site_config(port, {"/": slow.url}, f"workers: {workers}\n"))
        started = rex.cli("start", "-c", str(path))
        assert started.returncode == 0, started.stderr
        lines = started.stdout.strip().splitlines()
        assert "serving" in lines[0] and lines[-1].strip() == f"http://127.0.0.1:{port}/"
        configs[name] = (path, port, workers)
    masters = {m["config"]: m for m in json.loads(rex.cli("status", "--json").stdout)["masters"]}
    assert set(masters) == {str(path) for path, _, _ in configs.values()}
    for path, _port, workers in configs.values():
        master = masters[str(path)]
        assert master["state"] == "serving" and master["generation"] == 1
        assert 0 <= master["uptime"] < 60
        assert [w["worker"] for w in master["workers"]] == list(range(1, workers + 1))
        for w in master["workers"]:
            assert w["state"] == "ready" and w["generation"] == 1 and alive(w["pid"])
            assert isinstance(w["requests"], int) and isinstance(w["connections"], int)
    a_pid, b_pid = (masters[str(configs[n][0])]["pid"] for n in ("a", "b"))
    assert f"master {a_pid}  serving" in rex.cli("status").stdout

    stopped = rex.cli("stop", "-p", str(a_pid))
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped master {a_pid}"
    assert not alive(a_pid) and alive(b_pid) and not port_open(configs["a"][1])

    log = rex.home / "rex.log"
    log.rename(rex.home / "rex.log.1")
    os.kill(b_pid, signal.SIGUSR1)
    wait_for(lambda: log.exists() and "log files reopened" in log.read_text(), what="a new log")
    b_port = configs["b"][1]
    urllib.request.urlopen(f"http://127.0.0.1:{b_port}/after-rotation", timeout=10).read()
    wait_for(lambda: "/after-rotation" in log.read_text(), what="the worker's line in it")

    pending = fetch_in_thread(f"http://127.0.0.1:{b_port}/slow?s=1")
    assert slow.server.arrived.wait(10)
    stopped = rex.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(b_pid)  # `rex stop` returned only once the master was gone
    pending["thread"].join(5)
    assert pending["reply"][0] == 200
    assert daemons.running() == [] and not list((rex.home / "run").iterdir())


def test_start_fails_clearly_when_port_in_use(rex):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rex.write(f"server:\n  instances:\n    - port: {port}\n      host: 127.0.0.1\n")
        result = rex.cli("start", "-f", "-c", str(rex.config))
        assert result.returncode == 1
        assert result.stderr.strip() == f"rex: port {port} is already in use (instance 0)"


def test_stop_without_master(rex):
    result = rex.cli("stop")
    assert result.returncode == 1
    assert result.stderr.strip() == "rex: no running rex master"


def test_wheel_ships_the_starter_files(tmp_path):
    """A wheel install must carry conf/ (as rex_conf), not only an editable install."""
    # Build isolation: the build gets the setuptools and wheel pyproject.toml asks for,
    # whatever this environment has. Built from a copy so no build/ lands in the tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "bench", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(src)], check=True, capture_output=True)
    import zipfile

    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("rex.py", "rex_conf/rex.config.yaml", "rex_conf/public/index.html",
                     "rex_conf/pages/welcome.html", "rex_conf/pages/502.html",
                     "rex_workers/serve/worker.py", "rex_workers/config/model.py",
                     "rex_static/__init__.py"):
        assert expected in names, expected
