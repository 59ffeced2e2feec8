"""The bench's world in one temp dir: files, configs and the servers serving them.

``Lab`` writes the payload files and every config into its directory; starts
the nginx backend, then each system (nginx, the contender Rex, or a second
nginx to calibrate) as a proxy and as a static server; checks that each
answers every scenario's URL with the right bytes; and stops them all by
pid. Nothing is written outside the directory: Rex gets ``REX_HOME`` inside
it for its pid files and state.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import sys
from dataclasses import dataclass, field

from . import configs
from .procs import Server, StartError, fetch, free_ports
from .scenarios import FILES, GZIP_LEVEL, GZIP_TYPES, Scenario
from .wrk import DONE_SCRIPT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SITES = ("proxy", "static", "gzip")


@dataclass
class System:
    """One product under test: a server per site ("proxy", "static"), each on its port.

    Separate processes per site, as separate services would be deployed, so
    one site failing to start leaves the other's figures standing.
    """

    name: str
    servers: dict[str, Server] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # site -> why it did not start
    broken: dict[str, str] = field(default_factory=dict)  # scenario key -> why skipped
    tls: bool = False  # served over TLS (the HTTP/2 rows)

    def url(self, scenario: Scenario) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.ports[scenario.site]}{scenario.path}"

    def server(self, scenario: Scenario) -> Server | None:
        return self.servers.get(scenario.site)


class Lab:
    def __init__(self, workdir: str, nginx: str) -> None:
        self.dir = workdir
        self.nginx = nginx
        self.www = os.path.join(workdir, "www")
        self.script = os.path.join(workdir, "done.lua")
        self.servers: list[Server] = []
        self.digests: dict[str, str] = {}
        self.backend_port = 0

    def prepare(self) -> None:
        """The payload files, readable by nginx's unprivileged workers when run as root."""
        os.chmod(self.dir, 0o755)
        os.makedirs(self.www)
        for name, size in FILES.items():
            data = _json_payload(size) if name.endswith(".json") else _payload(size)
            self.digests[name] = hashlib.sha256(data).hexdigest()
            with open(os.path.join(self.www, name), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(self.www, name), 0o644)
        os.chmod(self.www, 0o755)
        _write(self.script, DONE_SCRIPT)

    def start_backend(self) -> None:
        """The origin; StartError if it cannot run, since nothing works without it."""
        (self.backend_port,) = free_ports(1)
        text = configs.nginx_backend(self.dir, "backend", self.backend_port, self.www)
        self._start_nginx("backend", text, self.backend_port)

    def start_system(self, name: str, product: str) -> System:
        """``product`` ("nginx" or "rex") as proxy and as static server, named ``name``."""
        system = System(name)
        for site in SITES:
            (port,) = free_ports(1)
            label = f"{name}-{site}"
            try:
                if product == "rex":
                    server = self._start_rex(label, self._rex_config(site, port), port)
                else:
                    server = self._start_nginx(label, self._nginx_config(label, site, port), port)
            except StartError as exc:
                system.failed[site] = str(exc)
                continue
            system.servers[site] = server
            system.ports[site] = port
        return system

    def start_h2_system(self, name: str, product: str, cert: str, key: str) -> System:
        """``product`` on TLS with HTTP/2, as proxy and static server (no gzip site)."""
        system = System(name, tls=True)
        for site in ("proxy", "static"):
            (port,) = free_ports(1)
            label = f"{name}-h2-{site}"
            where = {"root": self.www} if site == "static" else {"backend_port": self.backend_port}
            try:
                if product == "rex":
                    server = self._start_rex(label, configs.rex_h2(port, cert, key, **where), port)
                else:
                    text = configs.nginx_h2(self.dir, label, port, cert, key, **where)
                    server = self._start_nginx(label, text, port)
            except StartError as exc:
                system.failed[site] = str(exc)
                continue
            system.servers[site] = server
            system.ports[site] = port
        return system

    def start_relay(self) -> System:
        """The bare relay (``bench/relay.py``) in front of the backend, as the "proxy" site."""
        system = System("relay")
        (port,) = free_ports(1)
        try:
            server = self._start_python("relay", [sys.executable, "-m", "bench.relay", str(port),
                                                  str(self.backend_port)], port)
        except StartError as exc:
            system.failed["proxy"] = str(exc)
            return system
        system.servers["proxy"] = server
        system.ports["proxy"] = port
        return system

    def start_wsgi(self, name: str, product: str, app: str) -> System:
        """``app`` served by ``product`` ("rex": a ``wsgi:`` route, or "gunicorn") as "wsgi"."""
        system = System(name)
        (port,) = free_ports(1)
        try:
            if product == "rex":
                text = configs.rex_wsgi(port, app, REPO, as_root=os.geteuid() == 0)
                server = self._start_rex(f"{name}-wsgi", text, port)
            else:
                server = self._start_python(
                    f"{name}-wsgi", configs.gunicorn_argv(sys.executable, port, app), port)
        except StartError as exc:
            system.failed["wsgi"] = str(exc)
            return system
        system.servers["wsgi"] = server
        system.ports["wsgi"] = port
        return system

    def _start_python(self, name: str, argv: list[str], port: int) -> Server:
        """A Python server run from the checkout (its modules importable), up on ``port``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        server = Server(name, argv, os.path.join(self.dir, f"{name}.log"), cwd=REPO, env=env)
        self._start(server, port)
        return server

    def _nginx_config(self, label: str, site: str, port: int) -> str:
        if site == "proxy":
            return configs.nginx_proxy(self.dir, label, port, self.backend_port)
        if site == "gzip":
            return configs.nginx_gzip_proxy(self.dir, label, port, self.backend_port,
                                            GZIP_LEVEL, GZIP_TYPES)
        return configs.nginx_static(self.dir, label, port, self.www)

    def _rex_config(self, site: str, port: int) -> str:
        if site == "proxy":
            return configs.rex_proxy(port, self.backend_port)
        if site == "gzip":
            return configs.rex_gzip_proxy(port, self.backend_port, GZIP_LEVEL, GZIP_TYPES)
        return configs.rex_static(port, self.www)

    def _start_rex(self, label: str, text: str, port: int) -> Server:
        """``python -m rex start -f`` from this checkout, its state kept in the temp dir."""
        path = os.path.join(self.dir, f"{label}.yaml")
        _write(path, text)
        env = dict(os.environ, REX_HOME=os.path.join(self.dir, f"{label}-home"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        server = Server(label, [sys.executable, "-m", "rex", "start", "-f", "-c", path],
                        os.path.join(self.dir, f"{label}.log"), cwd=REPO, env=env)
        self._start(server, port)
        return server

    def _start_nginx(self, label: str, text: str, port: int) -> Server:
        _write(os.path.join(self.dir, f"{label}.conf"), text)
        os.makedirs(configs.nginx_temp_dir(self.dir, label))
        # SIGTERM is nginx's fast shutdown; SIGQUIT would wait for keep-alives.
        server = Server(label, configs.nginx_argv(self.nginx, self.dir, label),
                        os.path.join(self.dir, f"{label}.log"), stop_signal=signal.SIGTERM)
        self._start(server, port)
        return server

    def _start(self, server: Server, port: int) -> None:
        self.servers.append(server)  # before start: a half-started server is stopped too
        server.start([port])

    def verify(self, system: System, scenarios: list[Scenario]) -> None:
        """Fetch each scenario's URL once; a wrong answer takes that scenario out for it."""
        for scenario in scenarios:
            if scenario.site not in system.ports:
                continue  # its server did not start: reported once, in ``failed``
            name = scenario.path.lstrip("/")
            try:
                status, coding, body = fetch(system.ports[scenario.site], scenario.path,
                                             timeout=30, fields=scenario.headers)
                if coding == "gzip":
                    body = gzip.decompress(body)
            except (OSError, EOFError) as exc:  # EOFError: a gzip stream cut short
                system.broken[scenario.key] = f"GET {scenario.path} failed: {exc}"
                continue
            wants_gzip = "Accept-Encoding: gzip" in scenario.headers
            if status != 200:
                system.broken[scenario.key] = f"GET {scenario.path} answered {status}"
            elif wants_gzip and coding != "gzip":
                system.broken[scenario.key] = f"GET {scenario.path} was not gzipped"
            elif hashlib.sha256(body).hexdigest() != self.digests[name]:
                system.broken[scenario.key] = (f"GET {scenario.path} returned {len(body)} bytes, "
                                               f"not the {scenario.size} of the file")

    def stop(self) -> None:
        """Front ends first, the backend last, each by its own pid."""
        for server in reversed(self.servers):
            server.stop()


def _payload(size: int) -> bytes:
    line = b"rex bench payload 0123456789 abcdefghijklmnopqrstuvwxyz\n"
    return (line * (size // len(line) + 1))[:size]


def _json_payload(size: int) -> bytes:
    """An array of API-like records, exactly ``size`` bytes of valid JSON.

    Varied ids, names and numbers (a seeded generator: the same bytes every run)
    so it compresses like real JSON (about 6x at level 5), not like one repeated line.
    """
    rng = random.Random(19)
    out = "["
    while True:
        n = rng.randrange(10**6)
        record = json.dumps({"id": n, "name": f"user {n:06d}", "email": f"u{n}@example.com",
                             "score": round(rng.random() * 1000, 2),
                             "active": rng.random() < 0.5,
                             "tags": rng.sample(["a", "b", "c", "dev", "ops", "qa"], 2)},
                            separators=(",", ":"))
        if len(out) + len(record) + 2 > size:
            break
        out += ("," if len(out) > 1 else "") + record
    return (out + " " * (size - len(out) - 1) + "]").encode()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)

