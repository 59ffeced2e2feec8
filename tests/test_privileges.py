"""Dropping root (``user``/``group``): the master keeps root, its workers serve as the user.

Needs root to test for real (the tests run as root in CI); as another user only the
pure decisions are checked.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import ssl
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
from conftest import free_port, wait_for

from rex_workers.config.loader import default_config
from rex_workers.config.model import Route
from rex_workers.shared.privileges import account, problem

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")

# Says who it runs as, and whether it could read SECRET (a file only root may read).
ID_APP = """\
import os

SECRET = {secret!r}

def app(environ, start_response):
    try:
        open(SECRET).read()
        readable = "read"
    except PermissionError:
        readable = "denied"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{{os.getuid()}} {{os.getgid()}} {{os.environ.get('HOME')}} {{readable}}".encode()]
"""


@pytest.fixture
def open_dir():
    """A directory ``nobody`` can reach (pytest's tmp_path is closed to other users)."""
    path = Path(tempfile.mkdtemp(prefix="rex-drop-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def proc_ids(pid: int) -> tuple[list[int], list[int]]:
    """Real, effective, saved and filesystem uids and gids, as the kernel reports them."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines())
    return [int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()]


@ROOT_ONLY
def test_workers_serve_as_the_user_with_the_keys_root_read(rex, open_dir):
    secret = rex.workdir / "secret.txt"
    secret.write_text("root only\n")
    os.chmod(secret, 0o600)
    (open_dir / "idapp.py").write_text(ID_APP.format(secret=str(secret)))
    (open_dir / "logs").mkdir(mode=0o755)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(str(rex.workdir / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(rex.workdir / "cert.pem"))
    os.chmod(rex.workdir / "key.pem", 0o600)  # root's alone, in a directory closed to others
    port = free_port()
    rex.write(f"""\
server:
  instances:
    - port: {port}
      host: 127.0.0.1
      tls: {{cert: cert.pem, key: key.pem}}
      routes: [{{path: /, destination: "wsgi:idapp:app"}}]
pythonpath: [{open_dir}]
workers: 2
logging: {{access: {open_dir}/logs/access.log}}
user: nobody
""")
    rex.start()
    master_uids, _ = proc_ids(rex.pid)
    assert master_uids == [0, 0, 0, 0]  # the master keeps root (binding, reloads, keys)
    workers = rex.workers()
    assert len(workers) == 2
    for pid in workers:
        assert proc_ids(pid) == ([NOBODY.pw_uid] * 4, [NOBODY.pw_gid] * 4)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with urllib.request.urlopen(f"https://localhost:{port}/", context=context,
                                timeout=10) as resp:
            uid, gid, home, secret_read = resp.read().decode().split()
    assert (int(uid), int(gid), home) == (NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_dir)
    assert secret_read == "denied"  # the app holds nobody's rights, not root's
    log = open_dir / "logs" / "access.log"
    wait_for(lambda: log.exists() and "GET / " in log.read_text(), what="the access line")
    assert log.stat().st_uid == NOBODY.pw_uid  # handed over before the workers opened it
    # A rotation: the log moved away, SIGUSR1, and the workers write a new file as nobody.
    log.rename(log.with_suffix(".1"))
    rex.signal(signal.SIGUSR1)
    wait_for(lambda: log.exists(), what="the new log file")
    with urllib.request.urlopen(f"https://localhost:{port}/again", context=context,
                                timeout=10) as resp:
        resp.read()
    wait_for(lambda: "GET /again " in log.read_text(), what="a line in the new file")
    assert log.stat().st_uid == NOBODY.pw_uid


@ROOT_ONLY
def test_a_wsgi_app_as_root_needs_user_root_in_the_config(rex):
    (rex.workdir / "idapp.py").write_text(ID_APP.format(secret="/nonexistent"))
    text = (f"server:\n  instances:\n    - port: {free_port()}\n      host: 127.0.0.1\n"
            "      routes: [{path: /, destination: 'wsgi:idapp:app'}]\npythonpath: [.]\n")
    rex.config.write_text(text)  # not rex.write: that one opts in for the other tests
    run = rex.cli("start", "-f", "-c", str(rex.config))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "rex: refusing to run wsgi: apps as root: set the user key to the account they should "
        "run as (user: www-data), or write user: root to run them as root on purpose")


@ROOT_ONLY
def test_a_log_the_user_cannot_reach_refuses_to_start(rex, upstream):
    closed = rex.workdir / "logs"  # under pytest's tmp_path, closed to other users
    closed.mkdir()
    port = free_port()
    rex.write(f"server:\n  instances:\n    - port: {port}\n      host: 127.0.0.1\n"
              f"logging: {{access: {closed}/access.log}}\nuser: nobody\n")
    run = rex.cli("start", "-f", "-c", str(rex.config))
    assert run.returncode == 1
    assert f"rex: user nobody cannot reach {closed}/access.log: " in run.stderr
    assert "is closed to it" in run.stderr


def test_the_decisions_without_root():
    wsgi = replace(default_config(), instances=(replace(
        default_config().instances[0], routes=(Route("/", 0, wsgi="app:app"),)),))
    assert "set the user key" in problem(wsgi, 0)
    assert problem(replace(wsgi, user="root"), 0) == ""
    assert problem(wsgi, 1000) == ""  # not root: nothing to refuse
    other = replace(default_config(), user="nobody")
    assert problem(other, 1000 if NOBODY.pw_uid != 1000 else 1001).startswith(
        "user: nobody needs rex to start as root")
    assert account("nobody").uid == NOBODY.pw_uid
    assert account("nobody", "0").gid == 0
    assert account("4242") == account("4242")  # a bare uid: no passwd entry needed
    assert account("4242").gid == 4242
