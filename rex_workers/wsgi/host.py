"""WSGI applications served in-process: the ``wsgi:module:callable`` destination (SPEC §8).

May: import the configured apps once per worker (after ``worker.run`` has
monkey-patched the process), call them per request in the connection's
greenlet, and write their responses to the client socket. May not: patch
anything itself, or decide policy that lives in the pure helpers
(``wsgi_load`` finds the apps, ``wsgi_environ`` builds the environ,
``wsgi_response`` checks what the app passes to ``start_response`` and frames
the body, ``wsgi_input`` wraps the request body, ``wsgi_files`` is
``wsgi.file_wrapper``; the bytes of wrapped files go through ``rex_static``'s
sendfile pump).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gevent.lock import BoundedSemaphore

from rex_static.sendfile import send_file, send_head

from ..http import pages
from ..http.request import HTTPError
from .environ import build_environ
from .files import FileWrapper
from .input import ErrorStream, Input
from .load import App, extend_sys_path, load_app, load_route_app
from .response import (
    CHUNKED,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    Head,
    WSGIResponseError,
    chunk,
    framing,
    parse_head,
    render,
)

if TYPE_CHECKING:
    from ..config.model import Route
    from ..http.request import Request
    from ..serve.conn import ClientConn
    from ..serve.runtime import Runtime

_BIG = 65536  # chunks at least this long go out without being copied into one buffer


class _Mount:
    """One route's app and its optional concurrency cap."""

    __slots__ = ("app", "label", "pool")

    def __init__(self, spec: str, app: App, pool: int | None) -> None:
        self.app = app
        self.label = f"wsgi:{spec}"
        self.pool = BoundedSemaphore(pool) if pool else None


class WSGIApps:
    """Every WSGI app of a worker's config, imported at boot (a bad import fails the start)."""

    def __init__(self, rt: Runtime, load: Callable[[str], App] = load_app) -> None:
        self.rt = rt
        config = rt.config
        extend_sys_path(config)
        loaded: dict[str, App] = {}
        self.mounts: dict[Route, _Mount] = {}
        for instance in config.instances:
            for route in instance.routes:
                if not route.wsgi:
                    continue
                if route.wsgi not in loaded:
                    loaded[route.wsgi] = load_route_app(route.wsgi, load)
                self.mounts[route] = _Mount(route.wsgi, loaded[route.wsgi], route.pool)
        self.multiprocess = config.workers > 1

    def serve(self, conn: ClientConn, req: Request, route: Route, strip: int) -> tuple[int, int]:
        """Answer ``req`` with the route's app; returns (status, body bytes sent)."""
        mount = self.mounts[route]
        req.extra["upstream"] = mount.label
        if mount.pool is None:
            return _Call(self, mount, conn, req, strip).run()
        with mount.pool:  # excess requests wait here, in their own greenlets
            return _Call(self, mount, conn, req, strip).run()


class _ClientGone(Exception):
    """Writing to the client failed: the exchange ends, the connection closes."""


class _Call:
    """One request through one app: environ, start_response, body streaming, close()."""

    def __init__(self, apps: WSGIApps, mount: _Mount, conn: ClientConn, req: Request,
                 strip: int) -> None:
        self.mount = mount
        self.conn = conn
        self.req = req
        self.head: Head | None = None  # set by start_response
        self.mode = ""
        self.headers_sent = False
        self.left = 0  # bytes the announced Content-Length still allows
        self.sent = 0
        length = None if req.chunked else (req.content_length or 0)
        self.input = Input(conn.body_pieces(), length)
        self.errors = ErrorStream(conn.log_error, f"{mount.label}: ")
        server_name = req.host or _local_address(conn.sock)
        self.environ = build_environ(req, strip, trusted=req.client_addr[0] in apps.rt.trusted,
                                     server_name=server_name, wsgi={
                                         "wsgi.input": self.input,
                                         "wsgi.errors": self.errors,
                                         "wsgi.file_wrapper": FileWrapper,
                                         "wsgi.multiprocess": apps.multiprocess,
                                     })

    @property
    def status(self) -> int:
        return self.head.status if self.headers_sent else 0

    def run(self) -> tuple[int, int]:
        conn = self.conn
        try:
            self._respond()
        except _ClientGone:
            conn.keep_alive = False
        except HTTPError:
            # From reading wsgi.input (413, 408, a client that vanished): the
            # handler answers it, unless the app already started its response.
            if not self.headers_sent:
                raise
            conn.keep_alive = False
        except Exception:  # an app's bug is logged and answered, never fatal to the worker
            self._failed()
        finally:
            self.errors.flush()
        return self.status, self.sent

    def _respond(self) -> None:
        result = self.mount.app(self.environ, self.start_response)
        try:
            if not (type(result) is FileWrapper and self._sendfile(result)):
                self._iterate(result)
            self._finish()
        finally:
            # PEP 3333: close() is called whatever happened, even on errors.
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _failed(self) -> None:
        req = self.req
        self.conn.log_error(f"{self.mount.label}: {req.method} {req.raw_path.decode('latin-1')}"
                            f" raised:\n{traceback.format_exc().rstrip()}")
        if self.headers_sent:
            # Too late for a 500: closing is the only way to tell the client the
            # response is incomplete (RFC 9112 §8).
            self.conn.keep_alive = False
            return
        exc = HTTPError(f"{self.mount.label} raised an exception", 500)
        exc.close = self.conn.body_pending()
        raise exc

    # -- the callables the app sees ----------------------------------------------------
    def start_response(self, status: str, headers: list, exc_info=None) -> Callable:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # PEP 3333: the app's error reaches the server, which can only abort.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the traceback cycle (PEP 3333)
        elif self.head is not None:
            raise WSGIResponseError("start_response() called twice without exc_info")
        self.head = parse_head(status, headers)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: unbuffered, like every body piece."""
        if self.head is None:
            raise WSGIResponseError("write() called before start_response()")
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self._body(data)

    # -- the response ------------------------------------------------------------------------
    def _iterate(self, result: Iterable[bytes]) -> None:
        if type(result) in (list, tuple) and self.head is not None and not self.headers_sent:
            # The whole body is known: a Content-Length instead of chunked framing.
            self._set_length(sum(len(data) for data in result))
        for data in result:
            if type(data) is not bytes:
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            if data:
                self._body(data)
                if self.mode == NO_BODY:
                    break  # HEAD, 204, 304: the head was all there is to send
        if not self.headers_sent:
            self._set_length(0)
            self._send_head()

    def _set_length(self, length: int) -> None:
        """Announce a body length the app did not give, when Rex knows it."""
        head = self.head
        if head is None or head.content_length is not None or head.status in (204, 304):
            return
        # A HEAD answer should carry the GET answer's length (RFC 9110 §9.3.2), but
        # an empty HEAD body usually means "omitted", not "zero bytes long".
        if self.req.method == "HEAD" and not length:
            return
        head.content_length = length

    def _send_head(self, file_follows: bool = False) -> None:
        head = self.head
        if head is None:
            raise WSGIResponseError("the app returned without calling start_response()")
        conn = self.conn
        req = self.req
        # An unread request body would be parsed as the next request, and after an
        # Upgrade request (which WSGI cannot accept) the parser has stopped: close after.
        keep_alive = (conn.keep_alive and not conn.body_pending() and not req.upgrade
                      and not conn.rt.draining)
        self.mode, keep_alive = framing(head, req.method, req.version, keep_alive)
        conn.keep_alive = keep_alive
        self.left = head.content_length or 0
        data = render(head, self.mode, keep_alive, req.version, pages.http_date())
        if file_follows and self.mode != NO_BODY:
            try:
                conn.sock.settimeout(conn.rt.timeouts.read)  # also bounds the pump's waits
                send_head(conn.sock, data, file_follows=True)
            except OSError as exc:
                raise _ClientGone(str(exc)) from exc
        else:
            self._send(data)
        self.headers_sent = True

    def _body(self, data: bytes) -> None:
        if not self.headers_sent:
            self._send_head()
        mode = self.mode
        if mode == NO_BODY:
            return
        if mode == LENGTH:
            if len(data) > self.left:
                # Extra bytes would be read as the next response (RFC 9112 §6.3).
                self._log(f"body longer than its Content-Length; {len(data) - self.left}"
                          " bytes dropped")
                data = data[:self.left]
            self.left -= len(data)
        self.sent += len(data)
        if mode != CHUNKED:
            self._send(data)
        elif len(data) < _BIG:
            self._send(chunk(data))
        else:
            self._send(b"%x\r\n" % len(data))
            self._send(data)
            self._send(b"\r\n")

    def _finish(self) -> None:
        if self.mode == CHUNKED:
            self._send(LAST_CHUNK)
        elif self.mode == LENGTH and self.left:
            # The client would wait for bytes that never come: closing ends it.
            self._log(f"body {self.left} bytes shorter than its Content-Length")
            self.conn.keep_alive = False

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a wrapped regular file with the sendfile pump; False to iterate it instead."""
        span = wrapper.file_span()
        if span is None or self.head is None:
            return False
        fd, offset, size = span
        self._set_length(size)
        self._send_head(file_follows=True)
        if self.mode == NO_BODY:
            return True
        try:
            sent = send_file(self.conn.sock, fd, offset, min(size, self.left))
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc
        self.sent += sent
        self.left -= sent
        return True

    def _send(self, data: bytes) -> None:
        try:
            self.conn.send(data)
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    def _log(self, message: str) -> None:
        self.conn.log_error(f"{self.mount.label}: {self.req.method} "
                            f"{self.req.raw_path.decode('latin-1')}: {message}")


def _local_address(sock: Any) -> str:
    """SERVER_NAME for a request without Host (HTTP/1.0): the address it arrived on."""
    try:
        return str(sock.getsockname()[0])
    except (OSError, IndexError, TypeError):
        return "localhost"  # not an IP socket (tests); any name will do
