"""WSGI applications served in-process: the ``wsgi:module:callable`` destination (SPEC §8).

May: import the configured apps once per worker (after ``serve.worker`` has
monkey-patched the process), call them per request in the connection's
greenlet, and hand their responses to the request's ``Stream``. May not: patch
anything itself, write protocol bytes (the connection frames and sends), or
decide policy that lives in the pure helpers (``load`` finds the apps,
``environ`` builds the environ, ``response`` checks what the app passes to
``start_response``, ``input`` wraps the request body, ``files`` is
``wsgi.file_wrapper``; a wrapped regular file goes to the connection as a
``FileRegion``, which it sends with sendfile).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable

from gevent.lock import BoundedSemaphore

from ..config.model import Config, Route
from ..http.h1write import has_body
from ..http.message import FileRegion, Response, Stream
from ..http.pages import http_date
from ..http.request import Abort, HTTPError, printable
from .environ import base_environ, build_environ
from .files import FileWrapper
from .input import NO_BODY, ErrorStream, Input
from .load import App, extend_sys_path, load_app, load_route_app
from .response import Head, WSGIResponseError, fields, parse_head


class _Mount:
    """One route's app, its optional concurrency cap and the constant part of its environ."""

    __slots__ = ("app", "environ", "label", "pool")

    def __init__(self, spec: str, app: App, pool: int | None, multiprocess: bool) -> None:
        self.app = app
        self.label = f"wsgi:{spec}"
        self.pool = BoundedSemaphore(pool) if pool else None
        self.environ = base_environ(**{"wsgi.file_wrapper": FileWrapper,
                                       "wsgi.multiprocess": multiprocess})


class WSGIApps:
    """Every WSGI app of a worker's config, imported at boot (a bad import fails the start).

    ``trusted(ip)`` says whether a client's X-Forwarded-* may be believed.
    """

    def __init__(self, config: Config, trusted: Callable[[str], bool],
                 load: Callable[[str], App] = load_app) -> None:
        self.trusted = trusted
        extend_sys_path(config)
        loaded: dict[str, App] = {}
        self.mounts: dict[Route, _Mount] = {}
        self.multiprocess = config.workers > 1
        for instance in config.instances:
            for route in instance.routes:
                if not route.wsgi:
                    continue
                if route.wsgi not in loaded:
                    loaded[route.wsgi] = load_route_app(route.wsgi, load)
                self.mounts[route] = _Mount(route.wsgi, loaded[route.wsgi], route.pool,
                                            self.multiprocess)

    def serve(self, stream: Stream, route: Route, strip: int) -> None:
        """Answer the stream's request with the route's app."""
        mount = self.mounts[route]
        stream.outcome.upstream = mount.label
        if mount.pool is None:
            _Call(self, mount, stream, strip).run()
            return
        with mount.pool:  # excess requests wait here, in their own greenlets
            _Call(self, mount, stream, strip).run()


class _ClientGone(Exception):
    """Handing a response to the client failed (``__cause__``): not the app's error."""


class _Call:
    """One request through one app: environ, start_response, body streaming, close()."""

    def __init__(self, apps: WSGIApps, mount: _Mount, stream: Stream, strip: int) -> None:
        self.mount = mount
        self.stream = stream
        self.req = req = stream.request
        self.head: Head | None = None  # set by start_response
        self.started = False  # the head was handed to the stream
        if req.chunked or req.content_length:
            self.input = Input(stream.body(), None if req.chunked else req.content_length)
        else:
            self.input = NO_BODY  # nothing to read: one shared, stateless empty stream
        self.errors = ErrorStream(stream.log_error, f"{mount.label}: ")
        self.environ = build_environ(req, strip, trusted=apps.trusted(req.client_addr[0]),
                                     server_name=req.host or stream.local_address(),
                                     base=mount.environ,
                                     wsgi={"wsgi.input": self.input, "wsgi.errors": self.errors})

    def run(self) -> None:
        try:
            self._respond()
        except _ClientGone as exc:
            raise exc.__cause__ from None  # the connection's business, like any client error
        except (HTTPError, Abort):
            # From reading wsgi.input (413, 408, a client that vanished) or a
            # response the connection had to cut: the connection answers or closes.
            raise
        except Exception:  # an app's bug is logged and answered, never fatal to the worker
            self._failed()
        finally:
            self.errors.flush()

    def _respond(self) -> None:
        result = self.mount.app(self.environ, self.start_response)
        kind = type(result)
        if kind is list:  # a plain list has no close() to call
            if len(result) == 1 and self.head is not None and not self.started:
                self._whole(result[0])  # the commonest answer: head and body in one send
            else:
                self._iterate(result)
            return
        try:
            if not (kind is FileWrapper and self._sendfile(result)):
                self._iterate(result)
        finally:
            # PEP 3333: close() is called whatever happened, even on errors.
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _failed(self) -> None:
        req = self.req
        self.stream.log_error(f"{self.mount.label}: {req.method} {printable(req.raw_path)}"
                              f" raised:\n{traceback.format_exc().rstrip()}")
        if self.started:
            # Too late for a 500: cutting the connection is the only way to tell the
            # client the response is incomplete (RFC 9112 §8).
            raise Abort()
        exc = HTTPError(f"{self.mount.label} raised an exception", 500)
        exc.close = self.stream.body_pending()
        raise exc

    # -- the callables the app sees ----------------------------------------------------
    def start_response(self, status: str, headers: list, exc_info=None) -> Callable:
        if exc_info is not None:
            try:
                if self.started:
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
        self._write(data)

    # -- the response ------------------------------------------------------------------------
    def _iterate(self, result: Iterable[bytes]) -> None:
        if type(result) in (list, tuple) and self.head is not None and not self.started:
            # The whole body is known: a Content-Length instead of chunked framing.
            self._set_length(sum(len(data) for data in result))
        for data in result:
            if type(data) is not bytes:
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            if data:
                self._write(data)
                if not has_body(self.req.method, self.head.status):
                    break  # HEAD, 204, 304: the head was all there is to send
        if not self.started:
            self._set_length(0)
            self._start()
        self._hand(self.stream.end)

    def _whole(self, data: bytes) -> None:
        """A body the app gave as one piece, before anything was sent: a whole response,
        which the connection sends with its head (one send for a small one)."""
        if type(data) is not bytes:
            raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
        self._set_length(len(data))
        try:
            self.stream.respond(self._response(data))
        except OSError as exc:
            raise _ClientGone() from exc

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

    def _response(self, body=None) -> Response:
        head = self.head
        if head is None:
            raise WSGIResponseError("the app returned without calling start_response()")
        self.started = True
        return Response(head.status, fields(head, http_date()), body, head.content_length,
                        reason=head.reason, close=head.close)

    def _start(self) -> None:
        self._hand(self.stream.start, self._response())

    def _write(self, data: bytes) -> None:
        if not self.started:
            self._start()
        self._hand(self.stream.write, data)

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        """Hand a wrapped regular file to the connection as a region; False to iterate it."""
        span = wrapper.file_span()
        if span is None or self.head is None:
            return False
        fd, offset, size = span
        self._set_length(size)
        length = self.head.content_length
        # Never more than the app announced; fewer (a file shorter than its
        # Content-Length) and the connection closes after it.
        self._hand(self.stream.respond,
                   self._response(FileRegion(fd, offset, min(size, length))))
        return True

    @staticmethod
    def _hand(method: Callable, *args) -> None:
        """Call the stream; a client that went away is not the app's error."""
        try:
            method(*args)
        except OSError as exc:
            raise _ClientGone() from exc
