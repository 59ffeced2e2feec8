"""Soak one Rex worker: is its memory and descriptor count steady over a million requests?

Usage:
  soak.py [options]
  soak.py -h | --help

Options:
  --requests N    proxied keep-alive GETs through the worker [default: 1000000]
  --websockets N  WebSocket sessions (open, echo, close) [default: requests/100]
  --failures N    GETs to a dead upstream, each a 502 [default: requests/20]
  --samples N     measuring points after the warm-up [default: 10]
  --client KIND   wrk or python (a keep-alive loop); auto: wrk when installed
                  [default: auto]
  --json FILE     also write the figures as JSON to FILE ("-": stdout, table to stderr)

Two Rex masters of this checkout run with one worker each: the origin serves a
small static file, the front proxies to it (``/``), to a WebSocket echo server
run by this process (``/ws``) and to a port nobody listens on (``/dead``,
passive health off so every request really tries). The front worker's VmRSS
(/proc/PID/status) and open descriptors (/proc/PID/fd) are read at the start,
after a warm-up (5% of the work), after each of ``--samples`` equal slices of
the rest (each slice: its share of GETs, WebSocket sessions and failures), and
the slope after the warm-up is fitted by least squares. Not a test: a
measurement (docs/reliability.md has the figures); the exit status is 1 when a
request failed or the descriptors grew by more than ``FD_TOLERANCE``, so a
script can act on it.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import base64
import hashlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from docopt import DocoptExit, docopt

from bench.procs import Server, children, free_ports, vm_rss_mb
from bench.wrk import DONE_SCRIPT, parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 0.05
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
PAYLOAD = b"rex soak payload\n" * 4
# wrk runs for a duration, so a slice counted in requests needs help: after
# SOAK_LIMIT responses the script stops its thread and leaves a marker file,
# and the soak then ends the run with SIGINT (wrk prints its summary on it).
STOP_SCRIPT = """\
local limit = tonumber(os.getenv("SOAK_LIMIT"))
local marker = os.getenv("SOAK_MARKER")
local seen = 0
response = function(status, headers, body)
  seen = seen + 1
  if seen == limit then
    io.open(marker, "w"):close()
    wrk.thread:stop()
  end
end
""" + DONE_SCRIPT
POLL = 0.02
# Pooled upstream connections come and go by one or two: more than that is a leak.
FD_TOLERANCE = 2


@dataclass(frozen=True, slots=True)
class Sample:
    point: str
    requests: int
    websockets: int
    failures: int
    rss_mb: float
    fds: int


# -- the servers ------------------------------------------------------------------------


def start_rex(workdir: str, name: str, config: dict, port: int) -> Server:
    path = os.path.join(workdir, f"{name}.json")  # JSON is YAML: no quoting rule can bite
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    env = dict(os.environ, REX_HOME=os.path.join(workdir, f"{name}-home"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    server = Server(name, [sys.executable, "-m", "rex", "start", "-f", "-c", path],
                    os.path.join(workdir, f"{name}.log"), cwd=REPO, env=env)
    server.start([port])
    return server


def rex_config(port: int, routes: list[dict] | None = None, public: str | None = None) -> dict:
    instance = {"port": port, "host": "127.0.0.1", **({"public": public} if public else {}),
                **({"routes": routes} if routes else {})}
    return {"workers": 1, "logging": {"access": "off"}, "graceful_timeout": 2,
            "server": {"instances": [instance]}}


def echo_server() -> int:
    """A WebSocket echo server on a thread per connection; returns its port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def echo(conn: socket.socket) -> None:
    with conn, conn.makefile("rb") as f:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = f.readline()
            if not line:
                return
            head += line
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            opcode, payload = read_frame(f)
            conn.sendall(frame(opcode, payload, masked=False))
            if opcode == 8:  # close: echoed as the close handshake's answer (RFC 6455 §5.5.1)
                return


def frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    """One final frame; payloads under 126 bytes only (all this bench sends)."""
    mask = os.urandom(4) if masked else b""
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
    return bytes([0x80 | opcode, (0x80 if masked else 0) | len(payload)]) + mask + body


def read_frame(f) -> tuple[int, bytes]:
    first, second = f.read(2)
    length = second & 0x7F
    mask = f.read(4) if second & 0x80 else b""
    data = f.read(length)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return first & 0x0F, data


# -- the clients ------------------------------------------------------------------------


def websocket_sessions(port: int, count: int) -> None:
    for i in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
                s.makefile("rb") as f:
            key = base64.b64encode(os.urandom(16))
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
            status = f.readline()
            if not status.startswith(b"HTTP/1.1 101 "):
                raise RuntimeError(f"WebSocket session {i}: {status!r}")
            while f.readline() not in (b"\r\n", b""):
                pass
            message = b"soak %d" % i
            s.sendall(frame(1, message, masked=True))
            if read_frame(f) != (1, message):
                raise RuntimeError(f"WebSocket session {i}: no echo")
            s.sendall(frame(8, b"\x03\xe8", masked=True))
            read_frame(f)


def keep_alive_gets(port: int, path: str, count: int, status: int) -> None:
    """``count`` GETs of ``path``, reusing the connection while Rex allows it."""
    request = f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode()
    sock = f = None
    try:
        for _ in range(count):
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                f = sock.makefile("rb")
            sock.sendall(request)
            line = f.readline()
            if not line.startswith(b"HTTP/1.1 %d " % status):
                raise RuntimeError(f"GET {path}: {line!r}, expected {status}")
            length, close = 0, False
            while (field := f.readline()) not in (b"\r\n", b""):
                name, _, value = field.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                close |= name.lower() == b"connection" and value.strip().lower() == b"close"
            f.read(length)
            if close:
                f.close()
                sock.close()
                sock = f = None
    finally:
        if sock is not None:
            f.close()
            sock.close()


def wrk_gets(wrk: str, workdir: str, port: int, count: int) -> None:
    script, marker = os.path.join(workdir, "stop.lua"), os.path.join(workdir, "stopped")
    with open(script, "w", encoding="utf-8") as out:
        out.write(STOP_SCRIPT)
    env = dict(os.environ, SOAK_LIMIT=str(count), SOAK_MARKER=marker)
    argv = [wrk, "--threads=1", "--connections=8", "--duration=3600s", "--timeout=10s",
            f"--script={script}", f"http://127.0.0.1:{port}/payload.txt"]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            while not os.path.exists(marker) and proc.poll() is None:
                time.sleep(POLL)
            os.kill(proc.pid, signal.SIGINT)
            output = proc.communicate(timeout=30)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
            if os.path.exists(marker):
                os.unlink(marker)
    result = parse(output)
    if result.error_count:
        raise RuntimeError(f"wrk saw errors: {dict(result.errors)}")


# -- the soak ---------------------------------------------------------------------------


def measure(pid: int, point: str, done: tuple[int, int, int]) -> Sample:
    return Sample(point, *done, round(vm_rss_mb(pid), 2), len(os.listdir(f"/proc/{pid}/fd")))


def slope(samples: list[Sample], field: str) -> float:
    """Least-squares growth of ``field`` per 100,000 requests."""
    xs = [s.requests / 1e5 for s in samples]
    ys = [getattr(s, field) for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread \
        if spread else 0.0


def soak(requests: int, websockets: int, failures: int, samples: int, wrk: str | None,
         workdir: str) -> dict:
    www = os.path.join(workdir, "www")
    os.makedirs(www)
    with open(os.path.join(www, "payload.txt"), "wb") as f:
        f.write(PAYLOAD)
    origin_port, front_port, dead_port = free_ports(3)
    servers = []
    try:
        servers.append(start_rex(workdir, "origin", rex_config(origin_port, public=www),
                                 origin_port))
        routes = [{"path": "/ws", "destination": f"http://127.0.0.1:{echo_server()}"},
                  {"path": "/dead", "retries": 0, "destination": [
                      {"url": f"http://127.0.0.1:{dead_port}", "max_fails": 0}]},
                  {"path": "/", "destination": f"http://127.0.0.1:{origin_port}"}]
        servers.append(start_rex(workdir, "front", rex_config(front_port, routes), front_port))
        (pid,) = children(servers[-1].pid)
        done = [0, 0, 0]
        points = [measure(pid, "start", tuple(done))]
        shares = [WARMUP] + [(1 - WARMUP) / samples] * samples
        for i in range(len(shares)):
            goal = [round(total * sum(shares[:i + 1])) for total in
                    (requests, websockets, failures)]
            n, w, d = (g - have for g, have in zip(goal, done, strict=True))
            if wrk and n:
                wrk_gets(wrk, workdir, front_port, n)
            else:
                keep_alive_gets(front_port, "/payload.txt", n, 200)
            websocket_sessions(front_port, w)
            keep_alive_gets(front_port, "/dead", d, 502)
            done = goal
            points.append(measure(pid, "warm-up" if i == 0 else f"slice {i}", tuple(done)))
            p = points[-1]
            print(f"soak: {p.point}: {p.requests:,} requests, RSS {p.rss_mb:.2f} MB, "
                  f"{p.fds} fds", file=sys.stderr, flush=True)
    finally:
        for server in reversed(servers):
            server.stop()
    steady = points[1:]
    return {"requests": requests, "websockets": websockets, "failures": failures,
            "client": "wrk" if wrk else "python", "worker_pid": pid,
            "samples": [asdict(p) for p in points],
            "rss_mb_per_100k": round(slope(steady, "rss_mb"), 3),
            "fds_per_100k": round(slope(steady, "fds"), 3),
            "rss_growth_mb": round(points[-1].rss_mb - points[1].rss_mb, 2),
            "fds_growth": points[-1].fds - points[1].fds}


def render(result: dict) -> str:
    lines = [f"Rex soak: {result['requests']:,} requests ({result['client']}), "
             f"{result['websockets']:,} WebSocket sessions, {result['failures']:,} upstream "
             f"failures; worker pid {result['worker_pid']}",
             f"{'point':<10} {'requests':>10} {'websockets':>10} {'failures':>9} "
             f"{'RSS MB':>8} {'fds':>5}"]
    for s in result["samples"]:
        lines.append(f"{s['point']:<10} {s['requests']:>10,} {s['websockets']:>10,} "
                     f"{s['failures']:>9,} {s['rss_mb']:>8.2f} {s['fds']:>5}")
    lines.append(f"after the warm-up: RSS {result['rss_growth_mb']:+.2f} MB "
                 f"({result['rss_mb_per_100k']:+.3f} MB per 100k requests), "
                 f"fds {result['fds_growth']:+d} ({result['fds_per_100k']:+.3f} per 100k)")
    return "\n".join(lines)


def count(args: dict, name: str, default: int) -> int:
    value = args[name]
    number = default if value.startswith("requests/") else int(value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0")
    return number


def main(argv: list[str] | None = None) -> int:
    try:
        args = docopt(__doc__, argv=argv)
        requests = count(args, "--requests", 0)
        websockets = count(args, "--websockets", requests // 100)
        failures = count(args, "--failures", requests // 20)
        samples = int(args["--samples"])
        if requests < 1 or samples < 1 or args["--client"] not in ("auto", "wrk", "python"):
            raise ValueError("--requests and --samples must be >= 1; --client auto|wrk|python")
    except (DocoptExit, ValueError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    wrk = shutil.which("wrk") if args["--client"] != "python" else None
    if args["--client"] == "wrk" and not wrk:
        print("soak: wrk not found (sudo apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="rex-soak-")
    try:
        result = soak(requests, websockets, failures, samples, wrk, workdir)
    except RuntimeError as exc:
        print(f"soak: a request failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = sys.stderr if args["--json"] == "-" else sys.stdout
    print(render(result), file=out)
    if args["--json"] == "-":
        print(json.dumps(result, indent=2))
    elif args["--json"]:
        with open(args["--json"], "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0 if result["fds_growth"] <= FD_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
