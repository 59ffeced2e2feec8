"""rex_static behind Rex's real HTTP/1.1 connection, in this process, and a tiny HTTP client.

``StaticServer`` runs a gevent ``StreamServer`` on 127.0.0.1:0 whose connections
are Rex's own ``ClientConn`` (the worker's runtime context, the real parser and
response writer); only the dispatch is the harness's: it sets ``req.path`` with
a chosen normaliser, then asks ``StaticSite.handle`` and ``StaticSite.fallback``,
as the worker's site does. Run as a script (``python test_static_harness.py
ROOT``) it serves ROOT in the foreground and prints its port: the big-file
test measures that process.

This module holds no tests; the test_static_* modules import it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from urllib.parse import unquote

import gevent.socket
from gevent.server import StreamServer

from rex_static import StaticSite
from rex_workers.config.model import Config, Logging, StaticOptions
from rex_workers.http import message
from rex_workers.http.message import Outcome
from rex_workers.http.request import HTTPError, Request
from rex_workers.http.urlpath import normalize
from rex_workers.serve.conn import ClientConn
from rex_workers.serve.runtime import Runtime


def naive_path(raw_path: bytes) -> str:
    """A deliberately broken normaliser: decodes, never resolves dot-segments.

    With it, whatever a handler bug could pass on reaches ``StaticSite``
    unfiltered, so the traversal tests show rex_static's own checks suffice.
    """
    return unquote(raw_path.decode("latin-1"), errors="surrogateescape")


class _Dispatch:
    """The harness's stand-in for the worker's ``Listener``: static files or a 404."""

    port = 0
    scheme = "http"

    def __init__(self, site: StaticSite, normalizer) -> None:
        self.site = site
        self.normalizer = normalizer

    def respond(self, stream) -> None:
        req = stream.request
        req.path = self.normalizer(req.raw_path)
        if not (self.site.handle(stream) or self.site.fallback(stream)):
            exc = HTTPError("no file", 404)
            exc.close = False
            raise exc


@dataclass
class StaticServer:
    root: str
    opts: StaticOptions = field(default_factory=StaticOptions)
    normalizer: object = normalize
    ssl_context: object = None
    clock: object = None

    def __post_init__(self) -> None:
        kw = {"clock": self.clock} if self.clock else {}
        self.site = StaticSite(self.root, self.opts, **kw)
        self.results: list[tuple[int, int]] = []  # (status, body bytes) of each response
        self.ctx = Runtime(Config(path="", digest="", instances=(),
                                  logging=Logging(access=None)), {})
        self.ctx.access = self._note
        self.dispatch = _Dispatch(self.site, self.normalizer)
        tls = {"ssl_context": self.ssl_context} if self.ssl_context else {}
        self.server = StreamServer(("127.0.0.1", 0), self._connection, **tls)
        self.server.start()
        self.port = self.server.server_port

    def close(self) -> None:
        self.server.stop(timeout=1)

    def _note(self, req: Request, outcome: Outcome, duration: float) -> None:
        self.results.append((outcome.status, outcome.sent))

    def sock_wrapper(self, sock):
        """What the connection gets for each accepted socket (tests may count its calls)."""
        return sock

    def _connection(self, sock, addr) -> None:
        ClientConn(self.sock_wrapper(sock), addr, self.dispatch, self.ctx).serve()


class RouteServer:
    """A directory served by a ``static:`` route at ``prefix`` of a real site.

    The worker's own dispatch (``Listener`` → ``Site`` → the route's
    ``StaticSite``), from a config loaded like any other, in this process.
    ``normalizer`` replaces the site's path normaliser while it serves (the
    naive one shows the route's resolver is enough on its own).
    """

    def __init__(self, root: str, prefix: str = "/files", static: str = "",
                 normalizer=normalize) -> None:
        import os
        import tempfile

        from rex_workers.config.loader import load_config
        from rex_workers.config.routing import listeners
        from rex_workers.serve import site

        self.prefix = prefix
        self._dir = tempfile.mkdtemp()
        config = os.path.join(self._dir, "rex.config.yaml")
        with open(config, "w") as f:
            f.write(f"server:\n  instances:\n    - port: 8000\n      routes:\n"
                    f"        - {{path: {prefix}, destination: 'static:{root}'{static}}}\n"
                    "logging: {access: off}\n")
        loaded = load_config(config)
        self.ctx = Runtime(loaded, listeners(loaded))
        self.dispatch = next(iter(self.ctx.listeners.values()))
        self._site, self._saved = site, site.normalize
        site.normalize = normalizer
        self.server = StreamServer(("127.0.0.1", 0), self._connection)
        self.server.start()
        self.port = self.server.server_port

    def _connection(self, sock, addr) -> None:
        ClientConn(sock, addr, self.dispatch, self.ctx).serve()

    def close(self) -> None:
        import shutil

        self.server.stop(timeout=1)
        self._site.normalize = self._saved
        shutil.rmtree(self._dir, ignore_errors=True)


class RecordingStream:
    """Just enough of a ``Stream`` to call a responder directly: it keeps the response."""

    def __init__(self, req: Request) -> None:
        self.request = req
        self.outcome = Outcome()
        self.responses: list[message.Response] = []

    def respond(self, response: message.Response) -> None:
        self.responses.append(response)


# -- client ------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps its last value
    body: bytes
    raw: bytes  # the whole response as received


class Client:
    """One connection; ``request`` can be called again while the server keeps it open."""

    def __init__(self, port: int, ssl_context=None, timeout: float = 10.0) -> None:
        sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, method: str, target: bytes | str, headers: dict | None = None) -> None:
        if isinstance(target, str):
            target = target.encode()
        lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: localhost"]
        lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buf += data
        return bool(data)

    def read_response(self, method: str = "GET") -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0
        if method != "HEAD" and status not in (204, 304):
            length = int(headers["content-length"])
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed before the whole body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status, headers, body, head + b"\r\n\r\n" + body)

    def request(self, method: str, target: bytes | str, headers: dict | None = None) -> Response:
        self.send(method, target, headers)
        return self.read_response(method)

    def read_all(self) -> bytes:
        """Everything until the server closes (or stays quiet for the timeout)."""
        try:
            while self._fill():
                pass
        except TimeoutError:
            pass
        data, self.buf = self.buf, b""
        return data


def get(port: int, target: bytes | str, headers: dict | None = None, method: str = "GET",
        ssl_context=None) -> Response:
    with Client(port, ssl_context) as client:
        return client.request(method, target, headers)


def main() -> None:
    server = StaticServer(sys.argv[1])
    print(server.port, flush=True)
    server.server.serve_forever()


if __name__ == "__main__":
    main()
