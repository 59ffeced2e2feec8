"""Running Rex in production: foreground logs, `rex log`, log rotation, the port 80 → 443
rule, and a config updated the way a Kubernetes ConfigMap volume updates it.

Real masters (``rex start -f`` or daemonized), real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys

import pytest
import trustme
from conftest import free_port, port_open, read_reply, send_request, site_config, wait_for
from test_master import get

import rex as rex_cli
from rex_workers.config.loader import load_config

# The master's lines on stderr: "2026-05-02 10:31:07 [info] rex[4711]: message".
MASTER_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(info|error)\] rex\[(\d+)\]: (.*)$")
# A worker's error-log lines: "2026-05-02 10:31:07 [error] [worker 1] message".
WORKER_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(info|error)\] \[worker (\d+)\] (.*)$")


def start_split(rex) -> subprocess.Popen:
    """``rex start -f`` with stdout and stderr kept apart (journald and docker keep both)."""
    rex._out = open(rex.workdir / "stdout", "wb")  # noqa: SIM115 - closed by the fixture
    with open(rex.workdir / "stderr", "wb") as err:
        rex.proc = subprocess.Popen(
            [sys.executable, "-m", "rex", "start", "-f", "-c", str(rex.config)],
            cwd=rex.workdir, env=rex.env, stdout=rex._out, stderr=err)
    return rex.proc


def stream(rex, name: str) -> list[str]:
    return (rex.workdir / name).read_text(errors="replace").splitlines()


def test_foreground_logs_access_json_to_stdout_and_master_lines_to_stderr(rex, upstream):
    up = upstream()
    port, dead = free_port(), free_port()
    rex.write(site_config(port, {"/api": up.url, "/dead": f"http://127.0.0.1:{dead}"}, """\
        logging: {format: json}
        workers: 2
    """))
    start_split(rex)
    wait_for(lambda: any("serving" in line for line in stream(rex, "stderr")),
             what="the master's ready line")
    assert get(f"http://127.0.0.1:{port}/api/one?x=1")[0] == 200
    with pytest.raises(Exception, match="502"):
        get(f"http://127.0.0.1:{port}/dead")
    lines = wait_for(lambda: len(out := stream(rex, "stdout")) >= 2 and out,
                     what="two access lines on stdout")
    entries = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    ok = next(e for e in entries if e["target"] == "/api/one?x=1")
    assert ok["status"] == 200 and ok["method"] == "GET" and ok["remote"] == "127.0.0.1"
    assert ok["upstream"] == up.url and 0 <= ok["upstream_time"] <= ok["request_time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", ok["time"])
    failed = next(e for e in entries if e["target"] == "/dead")
    assert failed["status"] == 502 and failed["upstream"] == f"http://127.0.0.1:{dead}"

    rex.signal(signal.SIGTERM)
    assert rex.proc.wait(20) == 0
    err = stream(rex, "stderr")
    master = [m for m in map(MASTER_LINE.match, err) if m]
    assert {int(m[2]) for m in master} == {rex.pid}
    texts = [m[3] for m in master]
    assert f"rex {rex_cli.__version__}: master {rex.pid}, 2 worker(s), serving" in texts
    assert "graceful stop: draining workers" in texts
    workers = [m for m in map(WORKER_LINE.match, err) if m]
    assert any(m[1] == "error" and f"127.0.0.1:{dead}" in m[3] for m in workers), err
    # Nothing else on either stream: a log shipper can parse every line.
    unparsed = [line for line in err if not (MASTER_LINE.match(line) or WORKER_LINE.match(line)
                                              or line.startswith("  http"))]
    assert unparsed == []


class Follower:
    """``rex log`` as a subprocess, read without blocking the test."""

    def __init__(self, rex) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "rex", "log"], cwd=rex.workdir,
                                     env=rex.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.text = ""

    def saw(self, needle: str) -> bool:
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0.05)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return needle in self.text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C ends `rex log`
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


def test_rex_log_follows_the_daemon_s_server_log_and_exports_it(rex, upstream, daemons):
    missing = rex.cli("log")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"rex: no server log yet at {rex.home / 'rex.log'}"
    up = upstream()
    port = free_port()
    rex.write(site_config(port, {"/": up.url}, "workers: 1\n"))
    started = rex.cli("start", "-c", str(rex.config))
    assert started.returncode == 0, started.stderr
    follower = Follower(rex)
    try:
        wait_for(lambda: follower.saw("serving"), what="the recent log (its tail) at once")
        get(f"http://127.0.0.1:{port}/followed")
        wait_for(lambda: follower.saw('"GET /followed HTTP/1.1" 200'),
                 what="a new access line followed")
    finally:
        assert follower.stop() == 0
    exported = rex.workdir / "export.log"
    result = rex.cli("log", "-e", str(exported))
    assert result.returncode == 0
    assert result.stdout.strip() == f"exported {rex.home / 'rex.log'} to {exported}"
    assert "/followed" in exported.read_text()


def test_usr1_reopens_access_and_error_logs_after_rotation(rex, upstream):
    up = upstream()
    port, dead = free_port(), free_port()
    access, errors = rex.workdir / "access.log", rex.workdir / "error.log"
    rex.write(site_config(port, {"/ok": up.url}, f"""\
        workers: 2
        logging: {{access: {access}, error: {errors}}}
        upstream: [{{url: "127.0.0.1:{dead}", max_fails: 0}}]
    """))
    rex.start(ports=(port,))
    get(f"http://127.0.0.1:{port}/ok/before")
    wait_for(lambda: access.exists() and b"/ok/before" in access.read_bytes(), what="a line")
    old_access = access.rename(rex.workdir / "access.log.1")  # what logrotate does
    old_errors = errors.rename(rex.workdir / "error.log.1")
    os.kill(rex.pid, signal.SIGUSR1)
    wait_for(lambda: access.exists() and errors.exists(), what="both files reopened")
    for _ in range(4):  # whichever worker answers must write to the new files
        get(f"http://127.0.0.1:{port}/ok/after")
        with pytest.raises(Exception, match="502"):
            get(f"http://127.0.0.1:{port}/elsewhere")
    wait_for(lambda: access.read_bytes().count(b"/ok/after") == 4, what="access lines")
    wait_for(lambda: errors.read_text().count(f"127.0.0.1:{dead}") >= 4, what="error lines")
    assert b"/ok/after" not in old_access.read_bytes()
    assert f"127.0.0.1:{dead}" not in old_errors.read_text()


# ------------------------------------------------------------------ port 80 next to 443


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def cert_files(ca, tmp_path):
    issued = ca.issue_cert("localhost")
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def two_instances(plain_port: int, tls_port: int, plain_extra: str = "", top: str = "") -> str:
    return (f"server:\n  instances:\n"
            f"    - port: {plain_port}\n      host: 127.0.0.1\n{plain_extra}"
            f"    - port: {tls_port}\n      host: 127.0.0.1\n"
            f"      sslConfig: {{cert: site.crt, key: site.key}}\n{top}")


@pytest.mark.parametrize(("plain_port", "tls_port", "plain_extra", "top", "redirects"), [
    (80, 443, "", "", True),  # the original's rule
    (80, 443, "      redirect_https: false\n", "", False),  # opted out
    (80, 443, "      routes: [{path: /, destination: 'localhost:3000'}]\n", "", False),
    (80, 443, "", "upstream: [localhost:3000]\n", False),  # the global pool serves port 80
    (8080, 443, "", "", False),  # the rule is about ports 80 and 443 only
    (80, 8443, "", "", False),
    (8080, 8443, "      redirect_https: true\n", "", True),  # any port, when asked
], ids=["80-443", "opt-out", "routes", "global-upstream", "8080", "8443", "explicit"])
def test_when_a_plain_instance_redirects(tmp_path, cert_files, plain_port, tls_port,
                                         plain_extra, top, redirects):
    path = tmp_path / "rex.config.yaml"
    path.write_text(two_instances(plain_port, tls_port, plain_extra, top))
    plain, tls = load_config(str(path)).instances
    assert plain.redirect_https is redirects and plain.tls is None
    assert tls.redirect_https is False and tls.tls.cert == str(cert_files[0])


def can_bind(port: int) -> bool:
    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="binding ports 80 and 443 needs root")
def test_port_80_redirects_to_the_https_instance_on_443(rex, ca, cert_files):
    if not (can_bind(80) and can_bind(443)):
        pytest.skip("127.0.0.1:80 or :443 is in use on this machine")
    rex.write(two_instances(80, 443, top="workers: 1\nlogging: {access: off}\n"))
    try:
        rex.start(ports=(80, 443))
    except AssertionError:
        if "is already in use" in rex.output():  # taken between the look and the start
            pytest.skip("127.0.0.1:80 or :443 was taken by another process")
        raise
    reply = send_request(80, b"GET /shop?item=2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert reply.status == 308 and reply.headers["location"] == "https://localhost/shop?item=2"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", 443), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET /shop?item=2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = read_reply(s.makefile("rb"))
    assert reply.status == 200 and b"Rex" in reply.body  # the welcome page, over TLS


# ------------------------------------------------------------------ a ConfigMap update


def configmap_version(volume, name: str, text: str) -> None:
    """Publish ``text`` the way the kubelet updates a ConfigMap volume.

    The files live in a timestamped directory; ``..data`` links to it and each
    key (``rex.config.yaml``) links to ``..data/<key>``. An update writes a new
    directory, then renames a new ``..data`` link over the old one (atomic) and
    removes the old directory: the file itself is never written in place.
    """
    (volume / name).mkdir()
    (volume / name / "rex.config.yaml").write_text(text)
    data = volume / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(name, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", data)
    if old:
        for item in (volume / old).iterdir():
            item.unlink()
        (volume / old).rmdir()
    else:
        os.symlink("..data/rex.config.yaml", volume / "rex.config.yaml")


def test_a_configmap_style_symlink_swap_reloads_the_config(rex, upstream):
    first, second = upstream(), upstream()
    port = free_port()
    volume = rex.workdir / "configmap"
    volume.mkdir()
    configmap_version(volume, "..2026_05_02_10_00_00.1",
                      site_config(port, {"/": first.url}, "workers: 1\n"))
    rex.config = volume / "rex.config.yaml"  # -c points at the key's symlink
    rex.start(ports=(port,))
    get(f"http://127.0.0.1:{port}/one")
    assert [r["path"] for r in first.requests] == ["/one"]
    configmap_version(volume, "..2026_05_02_10_01_00.2",
                      site_config(port, {"/": second.url}, "workers: 1\n"))
    wait_for(lambda: rex.status()["generation"] == 2 and rex.status()["state"] == "serving",
             what="a reload onto the new ConfigMap version")
    assert rex.status()["config"] == str(volume / "rex.config.yaml")
    wait_for(lambda: get(f"http://127.0.0.1:{port}/two")[0] == 200 and second.requests,
             what="requests reaching the new upstream")
    assert "config file changed" in rex.output()
    assert port_open(port)

