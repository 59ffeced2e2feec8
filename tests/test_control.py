"""`rex reload`, `load`, `stop` and `log` against real masters: outcomes, targets, errors.

The commands run as subprocesses (``rex.cli``) against foreground masters (``rex``)
or daemons (``daemons``), in the directories of two projects sharing one REX_HOME.
"""

from __future__ import annotations

import json
import os

from conftest import Rex, free_port, site_config
from test_master import FLAKY_APP, get

from rex_workers.master.control import of_directory


def test_reload_and_load_wait_for_the_outcome_and_say_why_they_failed(rex):
    (rex.workdir / "flaky_app.py").write_text(FLAKY_APP)
    port = rex.serve({"/": "wsgi:flaky_app:app"}, "workers: 1\n")
    pid = rex.pid
    reloaded = rex.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout.splitlines()[-1] == (
        f"master {pid}: generation 2 is serving {rex.config}")
    assert rex.status()["generation"] == 2  # it returned once the new generation served

    (rex.workdir / "broken").touch()  # the app no longer imports
    failed = rex.cli("reload")
    assert failed.returncode == 1
    assert failed.stderr.strip() == (
        f"rex: master {pid}: reload failed; still serving generation 2: worker 1 could not "
        "start: WSGILoadError: wsgi:flaky_app:app: RuntimeError: broken on purpose")
    text = rex.cli("status").stdout.splitlines()
    at = next(i for i, line in enumerate(text) if line.startswith("  last reload failed at "))
    assert text[at].endswith(f"(SIGHUP, {rex.config}); still serving generation 2:")
    assert text[at + 1] == "    worker 1 could not start: WSGILoadError: " \
                           "wsgi:flaky_app:app: RuntimeError: broken on purpose"

    other = rex.workdir / "other.yaml"
    other.write_text(site_config(port, {"/other": "wsgi:flaky_app:app"}, "workers: 1\n"))
    loaded = rex.cli("load", str(other))
    assert loaded.returncode == 1
    assert loaded.stderr.splitlines() == [
        f"rex: master {pid}: reload failed; still serving generation 2: worker 1 could not "
        "start: WSGILoadError: wsgi:flaky_app:app: RuntimeError: broken on purpose",
        f"rex: the active config stays {rex.config}"]
    # Nothing recorded: the active config is still the one it was.
    assert rex.cli("config").stdout.startswith(f"# The effective config of {rex.config},")

    (rex.workdir / "broken").unlink()
    loaded = rex.cli("load", str(other))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines()[-2:] == [
        f"master {pid}: generation 3 is serving {other}", f"active config: {other}"]
    assert get(f"http://127.0.0.1:{port}/other/x")[0] == 200
    assert "last reload failed" not in rex.cli("status").stdout

    other.write_text(site_config(port, {"/": "wsgi:flaky_app:app"},
                                 "workers: nine\ngraceful_timeout: soon\n"))
    bad = rex.cli("reload", "-p", str(pid))  # the master validates: errors as `rex check` says
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert lines[0] == f"rex: master {pid}: reload failed; still serving generation 3:"
    assert [line.removeprefix("rex: ").split(": ")[:2] for line in lines[1:]] == [
        [f"{other}:7", "workers"], [f"{other}:8", "graceful_timeout"]]


def project(rex, name: str, port: int, extra: str = "") -> Rex:
    """A directory of its own with ./rex.config.yaml, under the fixture's REX_HOME."""
    other = Rex(rex.workdir / name, rex.home)
    other.workdir.mkdir()
    other.write(site_config(port, {"/": f"wsgi:app_{name}:app"}, f"workers: 1\n{extra}"))
    (other.workdir / f"app_{name}.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        f"    return [b'{name} ' + environ['PATH_INFO'].encode()]\n")
    return other


def masters(rex) -> dict[int, dict]:
    listed = json.loads(rex.cli("status", "--json").stdout)["masters"]
    return {m["pid"]: m for m in listed}


def test_load_and_stop_act_on_this_directory_s_master(rex, daemons):
    a_port, b_port, staging_port = free_port(), free_port(), free_port()
    a, b = project(rex, "a", a_port), project(rex, "b", b_port, "reuse_port: true\n")
    for p in (a, b):
        started = p.cli("start")  # no -c: each serves its own ./rex.config.yaml
        assert started.returncode == 0, started.stderr
    a_pid, b_pid = (next(m for m in masters(rex).values() if m["config"] == str(p.config))["pid"]
                    for p in (a, b))
    staging = b.workdir / "staging.yaml"
    staging.write_text(site_config(staging_port, {"/": "wsgi:app_b:app"}, "workers: 1\n"
                                   "reuse_port: true\n"))

    loaded = b.cli("load", "staging.yaml")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines() == [
        f"reloading master {b_pid} ({staging})",
        f"master {b_pid}: generation 2 is serving {staging}", f"active config: {staging}"]
    assert get(f"http://127.0.0.1:{staging_port}/s") == (200, b"b /s")
    now = masters(rex)
    assert now[a_pid]["config"] == str(a.config) and now[a_pid]["generation"] == 1
    assert get(f"http://127.0.0.1:{a_port}/a") == (200, b"a /a")  # project A's master stayed

    # Outside both projects: no master is this directory's, so none is picked.
    refused = rex.cli("stop")
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert lines[0] == (f"rex: no running rex master serves {rex.config} or was started in "
                        f"{rex.workdir}; say which with -p (or --all):")
    assert sorted(lines[1:]) == sorted([
        f"rex:   -p {a_pid}  {a.config}  (started in {a.workdir})",
        f"rex:   -p {b_pid}  {staging}  (started in {b.workdir})"])

    # Two masters serving project B's config (reuse_port shares the port): B must say which.
    twin = b.cli("start", "-c", "staging.yaml")
    assert twin.returncode == 0, twin.stderr
    twin_pid = next(pid for pid in masters(rex) if pid not in (a_pid, b_pid))
    ambiguous = b.cli("stop")
    assert ambiguous.returncode == 1
    assert ambiguous.stderr.splitlines()[0] == (
        f"rex: 2 running masters serve {staging}; say which with -p:")
    assert {f"-p {b_pid}", f"-p {twin_pid}"} <= {
        line.removeprefix("rex:").strip()[:len(f"-p {b_pid}")]
        for line in ambiguous.stderr.splitlines()[1:]}
    assert b.cli("load", "rex.config.yaml").returncode == 1  # nothing changed
    assert b.cli("check").stdout.startswith(f"{staging}: ok")

    assert b.cli("stop", "-p", str(twin_pid)).returncode == 0
    stopped = b.cli("stop")
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped master {b_pid}"
    assert set(masters(rex)) == {a_pid}
    everything = rex.cli("stop", "--all")
    assert everything.returncode == 0 and everything.stdout.strip() == f"stopped master {a_pid}"
    assert daemons.running() == []


def test_log_export_to_a_missing_directory_is_one_line(rex):
    os.makedirs(rex.home, exist_ok=True)
    (rex.home / "rex.log").write_text("a line\n")
    result = rex.cli("log", "-e", "/missing/dir/x.log")
    assert result.returncode == 1
    assert result.stderr == ("rex: cannot export the log to /missing/dir/x.log: "
                             "No such file or directory\n")
    exported = rex.cli("log", "-e", str(rex.workdir / "x.log"))
    assert exported.returncode == 0 and (rex.workdir / "x.log").read_text() == "a line\n"


def test_the_masters_of_a_directory():
    a = {"pid": 1, "config": "/a/rex.config.yaml", "dir": "/a"}
    b = {"pid": 2, "config": "/b/staging.yaml", "dir": "/b"}
    c = {"pid": 3, "config": "/c/x.yaml", "dir": "/b"}
    assert of_directory([a, b, c], "/a/rex.config.yaml", "/a") == [a]
    assert of_directory([a, b, c], "/b/staging.yaml", "/b") == [b]  # serving it comes first
    assert of_directory([a, b, c], "/b/rex.config.yaml", "/b") == [b, c]  # started there: ask
    assert of_directory([a, b, c], "/d/rex.config.yaml", "/d") == []
