"""Shared fixtures: real Rex masters as subprocesses, real upstream servers.

Everything binds 127.0.0.1; every process started here is ended by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class Rex:
    """A foreground master (`rex start -f`) run as a subprocess."""

    def __init__(self, workdir: Path, home: Path) -> None:
        self.workdir = workdir
        self.home = home
        self.proc: subprocess.Popen | None = None
        self.config = workdir / "rex.config.yaml"
        self.log = workdir / "rex.out"
        self._seen: set[int] = set()

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env["REX_HOME"] = str(self.home)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("NOTIFY_SOCKET", None)
        return env

    def write(self, text: str) -> Path:
        self.config.write_text(as_root(textwrap.dedent(text)))
        return self.config

    def cli(self, *args: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rex", *args], cwd=self.workdir,
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              **kw)

    def start(self, *args: str, ports: tuple[int, ...] = (), wait: bool = True) -> Rex:
        return self.launch("start", "-f", "-c", str(self.config), *args, ports=ports, wait=wait)

    def launch(self, *argv: str, ports: tuple[int, ...] = (), wait: bool = True) -> Rex:
        """Run `rex <argv>` as a foreground master (a one-liner, `start -f`) until stop()."""
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "rex", *argv], cwd=self.workdir,
                                     env=self.env, stdout=self._out, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
            for port in ports:
                wait_for(lambda p=port: port_open(p), what=f"port {port}")
        return self

    def serve(self, routes: str | dict[str, str], settings: str = "", **site: str) -> int:
        """Start on a one-site config (``site_config``) with a free port; returns the port."""
        port = free_port()
        self.write(site_config(port, routes, settings, **site))
        self.start(ports=(port,))
        return port

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"rex exited with {self.proc.returncode}:\n{self.output()}")
            return "serving" in self.output()

        wait_for(ready, timeout, what="rex to be ready")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        pids = children(self.pid)
        self._seen.update(pids)
        return pids

    def status(self) -> dict:
        path = self.home / "run" / f"{self.pid}.status"
        return json.loads(path.read_text())

    def signal(self, sig: int) -> None:
        self.workers()
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.workers()
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        for pid in self._seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._out.close()
        return self.proc.returncode


def site_config(port: int, routes: str | dict[str, str], settings: str = "", *,
                instance: str = "") -> str:
    """Config text for one site on 127.0.0.1:``port``, then the top-level ``settings``.

    ``routes`` is the YAML list under ``routes:``, or ``{path: destination}``;
    ``instance`` holds more keys of the site (``public: ...``). Each text may come
    indented as it stands in a test: it is dedented and put in its place.
    """
    if isinstance(routes, dict):
        routes = "".join(f'- {{path: {path}, destination: "{to}"}}\n'
                         for path, to in routes.items())
    site = (f"- port: {port}\n  host: 127.0.0.1\n" + _block(instance, "  ")
            + "  routes:\n" + _block(routes, "    "))
    return as_root("server:\n  instances:\n" + _block(site, "    ") + _block(settings, ""))


def as_root(text: str) -> str:
    """The tests run as root, and Rex runs a wsgi: app as root only when the config says
    ``user: root`` (docs/limits.md): a config with one says so, unless it names a user."""
    if os.geteuid() == 0 and "wsgi:" in text and not re.search(r"^user:", text, re.M):
        return text.rstrip("\n") + "\nuser: root\n"
    return text


def _block(text: str, pad: str) -> str:
    text = textwrap.dedent(text).strip("\n")
    return textwrap.indent(text, pad) + "\n" if text else ""


@pytest.fixture
def sendfile_calls(monkeypatch):
    """The byte counts of every os.sendfile call in this process (the kernel moved them)."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out, fd, offset, count):
        n = real(out, fd, offset, count)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


@pytest.fixture
def rex(tmp_path: Path):
    instances: list[Rex] = []

    def make() -> Rex:
        r = Rex(tmp_path, tmp_path / "home")
        instances.append(r)
        return r

    r = make()
    r.make = make
    yield r
    for r in instances:
        r.stop()


class Recorder(BaseHTTPRequestHandler):
    """Echoes each request as JSON and records it on the server."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass  # keep test output clean

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {
            "method": self.command, "path": self.path, "headers": dict(self.headers.items()),
            "body": body.decode("latin-1"), "port": self.server.server_port,
            "peer": self.client_address[1],
        }
        self.server.requests.append(record)
        payload = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


class Upstream:
    def __init__(self, handler=Recorder) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.requests = []
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict]:
        return self.server.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    servers: list[Upstream] = []

    def make(handler=Recorder) -> Upstream:
        s = Upstream(handler)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def read_until_close(sock: socket.socket, timeout: float, until: bytes | None = None,
                     at_least: int = 0) -> tuple[bytes, bool]:
    """What ``sock`` receives until it closes or the deadline: (bytes, closed).

    With ``until``, stop early once those bytes and then ``at_least`` more have come.
    """
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        if until is not None and until in data and \
                len(data) - data.index(until) - len(until) >= at_least:
            return data, False
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue  # the deadline check above ends it
        except ConnectionResetError:
            chunk = b""  # a reset is a close as well: what matters is that it came
        if not chunk:
            return data, True
        data += chunk


# -- proxy engine helpers (issue 3) -------------------------------------------------


@pytest.fixture(scope="module")
def rex_module(tmp_path_factory):
    """One master shared by a whole test module: starting one per test is too slow."""
    base = tmp_path_factory.mktemp("rex")
    r = Rex(base, base / "home")
    yield r
    r.stop()


class RawUpstream:
    """A TCP server handing each connection to ``handler(sock)`` in its own thread.

    For upstreams that misbehave (close early, send garbage, stall) or speak a
    raw protocol (WebSocket). ``connections`` counts accepted connections.
    """

    def __init__(self, handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.received: list[bytes] = []  # raw bytes of each connection, as read by `recv_head`
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed by close()
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass  # the proxy hung up: part of what these upstreams are for
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # never listened or already shut
        self.listener.close()
        for conn in self._open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
            conn.close()


def recv_head(sock: socket.socket) -> bytes:
    """Read one request head (up to and including the blank line) byte by byte."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {data!r}")
        data += byte
    return data


@pytest.fixture(scope="module")
def upstream_module():
    """Like ``upstream`` but module-scoped; ``.raw(handler)`` makes a RawUpstream."""
    made: list = []

    def make(handler=Recorder) -> Upstream:
        s = Upstream(handler)
        made.append(s)
        return s

    def raw(handler) -> RawUpstream:
        s = RawUpstream(handler)
        made.append(s)
        return s

    make.raw = raw
    yield make
    for s in made:
        s.close()


class Reply:
    """One HTTP response read from a client socket by ``read_reply``."""

    def __init__(self, status: int, head: bytes, body: bytes, trailers: bytes,
                 interim: list[bytes]) -> None:
        self.status = status
        self.head = head
        self.body = body
        self.trailers = trailers
        self.interim = interim
        self.headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()


def read_head(f) -> bytes:
    """Read one message head, through its blank line, from a buffered socket file."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            raise ConnectionError(f"closed in a head: {head!r}")
        head += line
    return head


def read_reply(f, head_request: bool = False) -> Reply:
    """Read one response from a buffered socket file (``sock.makefile("rb")``)."""
    interim = []
    while True:
        head = read_head(f)
        status = int(head.split(b" ", 2)[1])
        if 100 <= status < 200 and status != 101:
            interim.append(head)
            continue
        break
    reply = Reply(status, head, b"", b"", interim)
    if head_request or status in (101, 204, 304):
        return reply
    if "content-length" in reply.headers:
        reply.body = f.read(int(reply.headers["content-length"]))
    elif reply.headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                break
            parts.append(f.read(size))
            assert f.read(2) == b"\r\n"
        reply.body = b"".join(parts)
        while (line := f.readline()) != b"\r\n":
            reply.trailers += line
    else:
        reply.body = f.read()
    return reply


def send_request(port: int, request: bytes, timeout: float = 5.0) -> Reply:
    """Send ``request`` on a new connection to 127.0.0.1:``port`` and read one reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return read_reply(s.makefile("rb"), head_request=request.startswith(b"HEAD "))


# -- master helpers (issue 4): load loops and /proc views of sockets ------------------


class LoadLoop:
    """Threads sending GETs over keep-alive connections (http.client) until stopped.

    A request that fails on a *reused* connection before any byte of its
    response came back is a reconnect: the server closed that idle keep-alive
    connection as the request went out, which RFC 9112 §9.3.1 lets a client
    retry on a new connection (browsers and urllib3 do). It is retried once,
    at once, and counted in ``reconnects``. Everything else (an error on a new
    connection, a second failure, a status other than 200, a short body) is a
    failure, kept with its reason in ``failures``.
    """

    def __init__(self, port: int, path: str = "/", threads: int = 4) -> None:
        self.port = port
        self.path = path
        self.ok = 0
        self.reconnects: list[str] = []
        self.failures: list[str] = []
        self.errors_by_thread: dict[int, list[str]] = {}
        self.conns: dict[int, object] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def start(self) -> LoadLoop:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadLoop:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for conn in self.conns.values():
            conn.close()
        return self

    def wait_for(self, more: int, timeout: float = 10.0) -> None:
        """Block until ``more`` further requests have succeeded."""
        target = self.ok + more
        wait_for(lambda: self.ok >= target, timeout, what=f"{more} requests")

    def local_ports(self) -> dict[int, int]:
        """Thread index -> local port of its current connection (for /proc look-ups)."""
        ports = {}
        for i, conn in list(self.conns.items()):
            sock = getattr(conn, "sock", None)
            try:
                ports[i] = sock.getsockname()[1]
            except (OSError, AttributeError):
                pass  # between connections: no port right now
        return ports

    def _note(self, i: int, kind: list, text: str) -> None:
        with self._lock:
            kind.append(text)
            self.errors_by_thread.setdefault(i, []).append(text)

    def _run(self, i: int) -> None:
        import http.client

        conn = self.conns[i] = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            reused = conn.sock is not None
            try:
                self._one(conn)
            except (ConnectionError, http.client.RemoteDisconnected) as exc:
                conn.close()
                if not reused:
                    self._note(i, self.failures, f"new connection: {exc!r}")
                    continue
                self._note(i, self.reconnects, repr(exc))
                try:
                    self._one(conn)
                except Exception as again:  # every reason is a failure here
                    conn.close()
                    self._note(i, self.failures, f"after a reconnect: {again!r}")
            except Exception as exc:  # every reason is a failure here
                conn.close()
                self._note(i, self.failures, repr(exc))

    def _one(self, conn) -> None:
        conn.request("GET", self.path)
        resp = conn.getresponse()
        try:
            body = resp.read()
        except Exception as exc:
            # Bytes of this response arrived: no client may retry this blindly.
            raise AssertionError(f"response cut short: {exc!r}") from exc
        if resp.status != 200:
            raise AssertionError(f"status {resp.status}: {body[:200]!r}")
        with self._lock:
            self.ok += 1


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open."""
    found = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return found  # the process is gone
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket; state "0A" = LISTEN."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        rows.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16), state, inode))
    return rows


def tcp_to(remote_port: int) -> list[tuple[int, str, int]]:
    """(local port, state, bytes waiting to be read) of each TCP socket on this machine
    connected to ``remote_port``; state "01" = ESTABLISHED, "08" = CLOSE_WAIT.

    What the kernel holds, for tests that must wait until bytes or a FIN sent over
    loopback have really arrived (on a busy box delivery can lag the sender's return).
    """
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                rows.append((int(fields[1].rsplit(":", 1)[1], 16), fields[3],
                             int(fields[4].split(":")[1], 16)))
    return rows


def connection_owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of the connection from ``client_port``."""
    inodes = {inode for local, remote, _state, inode in tcp_table()
              if local == server_port and remote == client_port}
    for pid in pids:
        if socket_inodes(pid) & inodes:
            return pid
    return None


class Daemons:
    """Daemonized masters (`rex start` without -f) under one REX_HOME, found by pid file."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.seen: set[int] = set()

    def running(self) -> list[int]:
        pids = []
        for path in (self.home / "run").glob("*.json"):
            try:
                pid = int(json.loads(path.read_text())["pid"])
            except (OSError, ValueError, KeyError):
                continue  # being rewritten: look again later
            if alive(pid):
                pids.append(pid)
                self.seen.update([pid, *children(pid)])
        return sorted(pids)

    def cleanup(self) -> None:
        for pid in self.running():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in self.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemons(rex):
    """Stops (by pid) every master a test daemonized under the ``rex`` fixture's home."""
    d = Daemons(rex.home)
    yield d
    d.cleanup()
