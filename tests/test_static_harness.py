"""A stand-in connection handler for rex_static tests, and a tiny HTTP client.

``StaticServer`` parses requests with httptools into ``Request`` objects and
calls ``StaticSite.handle`` then ``StaticSite.fallback`` the way the worker's
handler does, on a real gevent ``StreamServer`` bound to 127.0.0.1:0. Run as a
script (``python test_static_harness.py ROOT``) it serves ROOT in the
foreground and prints its port: the big-file test measures that process.

This module holds no tests; the test_static_* modules import it.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import unquote

import gevent.socket
import httptools
from gevent.server import StreamServer

from rex_static import StaticSite
from rex_workers.config.model import StaticOptions
from rex_workers.http import pages
from rex_workers.http.request import HTTPError, Request
from rex_workers.http.urlpath import normalize


def naive_path(raw_path: bytes) -> str:
    """A deliberately broken normaliser: decodes, never resolves dot-segments.

    With it, whatever a handler bug could pass on reaches ``StaticSite``
    unfiltered, so the traversal tests show rex_static's own checks suffice.
    """
    return unquote(raw_path.decode("latin-1"), errors="surrogateescape")


class _Parsed:
    """httptools callbacks → ``Request`` objects (bodies are ignored)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[Request] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self._url, self._headers = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        raw_path, _, query = self._url.partition(b"?")
        self.requests.append(Request(
            method=p.get_method().decode(), target=self._url, path="", query=query,
            version=p.get_http_version(), headers=self._headers, raw_path=raw_path,
            keep_alive=p.should_keep_alive()))


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
        self.results: list[tuple[int, int]] = []
        tls = {"ssl_context": self.ssl_context} if self.ssl_context else {}
        self.server = StreamServer(("127.0.0.1", 0), self._connection, **tls)
        self.server.start()
        self.port = self.server.server_port

    def close(self) -> None:
        self.server.stop(timeout=1)

    def _connection(self, sock, addr) -> None:
        sock.settimeout(10)
        parsed = _Parsed()
        try:
            while True:
                while not parsed.requests:
                    data = sock.recv(65536)
                    if not data:
                        return
                    try:
                        parsed.parser.feed_data(data)
                    except httptools.HttpParserError:
                        sock.sendall(pages.response(400))
                        return
                req = parsed.requests.popleft()
                self.results.append(self._respond(sock, req))
                if not req.keep_alive:
                    return
        except OSError:
            pass  # the client went away: as in the real handler
        finally:
            sock.close()

    def _respond(self, sock, req: Request) -> tuple[int, int]:
        try:
            req.path = self.normalizer(req.raw_path)
        except HTTPError as exc:
            sock.sendall(pages.response(exc.status, keep_alive=req.keep_alive))
            return exc.status, 0
        result = self.site.handle(sock, req)
        if result is None:
            result = self.site.fallback(sock, req)
        if result is None:
            sock.sendall(pages.response(404, keep_alive=req.keep_alive,
                                        head_only=req.method == "HEAD"))
            result = (404, 0)
        return result


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
