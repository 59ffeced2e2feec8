"""``StaticSite``: GET and HEAD for the files under one instance's ``public`` root.

The one module of rex_static that writes responses. It asks the pure
modules what to do (``resolve``: which file or refusal; ``negotiate``: which
encoding; ``conditional``: which status and bytes), the file system for
facts (``files``, ``listing``), and hands large bodies to the ``sendfile``
pump. Small files (≤ ``SMALL_FILE``) and every file's header lines are kept
in a short-lived cache, so a hot file costs no system call but the send.

The connection handler owns the request: its body, keep-alive, timeouts and
the access log. ``handle`` and ``fallback`` each write one whole response or
nothing (None: "not mine, try the routes").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rex_workers.http import pages
from rex_workers.http.wire import send_all

from . import listing
from .cache import TTLCache
from .conditional import NOT_MODIFIED, NOT_SATISFIABLE, PARTIAL, Outcome, evaluate
from .files import EXHAUSTED, Changed, FileSystem, identity
from .mime import content_type
from .negotiate import SUFFIXES, choose_encoding
from .representation import Representation, body_lines, describe, head
from .resolve import (
    FILE,
    FORBIDDEN,
    Decision,
    File,
    Listing,
    Node,
    Redirect,
    Refuse,
    admit,
    fallback_file,
    looks_like_client_route,
    path_problem,
    raw_path_problem,
    resolve,
)
from .sendfile import send_file, send_head

if TYPE_CHECKING:
    from rex_workers.config.model import StaticOptions
    from rex_workers.http.request import Request

# Metadata may be this many seconds old: a changed file is seen within a
# second, while a hot path costs one resolution per second, not per request.
CACHE_TTL = 1.0
SMALL_FILE = 64 * 1024  # bodies up to this size are kept in memory and sent with the head
CACHE_ENTRIES = 4096
CACHE_BYTES = 32 * 1024 * 1024  # per worker and site: the bodies of small files

Result = tuple[int, int] | None
_METHODS = ("GET", "HEAD")
_FALLBACK_KEY = ("fallback",)  # cache key of the SPA document; paths are str, never tuples


@dataclass(slots=True)
class Variant:
    node: Node
    rep: Representation


@dataclass(slots=True)
class Target:
    """A file ready to serve: the plain variant (key None) and precompressed ones."""

    variants: dict[str | None, Variant]

    @property
    def cached_bytes(self) -> int:
        return sum(len(v.rep.content or b"") for v in self.variants.values())


class StaticSite:
    def __init__(self, root: str, opts: StaticOptions, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = os.path.realpath(root)  # "public" may itself be a symlink
        self.opts = opts
        self.fs = FileSystem(self.root, opts.follow_symlinks)
        self.cache = TTLCache(CACHE_TTL, CACHE_ENTRIES, CACHE_BYTES, clock)
        self._responders = {
            Refuse: self._refuse,
            Redirect: self._redirect,
            Listing: self._list,
            Target: self._serve,
        }

    # -- the two entry points -------------------------------------------------
    def handle(self, sock, req: Request) -> Result:
        """Answer a GET/HEAD from the files; None when there is no file for the path."""
        if req.method not in _METHODS:
            return None
        # req.path comes normalised from the handler; the raw path is checked
        # again here so that no single bug there can open the file system.
        problem = raw_path_problem(req.raw_path) or path_problem(req.path)
        if problem is not None:
            return self._refuse(sock, req, Refuse(FORBIDDEN, problem), req.path)
        path = req.path
        try:
            decision = self._decide(path, lambda: resolve(self.root, path, self.opts,
                                                          self.fs.lookup))
        except OSError as exc:
            return self._unavailable(sock, req, exc)
        if decision is None:
            return None
        return self._responders[type(decision)](sock, req, decision, path)

    def fallback(self, sock, req: Request) -> Result:
        """The SPA document for a client-side route nothing else answered, or None."""
        name = self.opts.fallback
        if not name or req.method not in _METHODS:
            return None
        if not looks_like_client_route(req.path, req.header(b"accept")):
            return None
        if raw_path_problem(req.raw_path) or path_problem(req.path):
            return None
        try:
            decision = self._decide(_FALLBACK_KEY, lambda: fallback_file(
                self.root, name, self.opts, self.fs.lookup))
        except OSError as exc:
            return self._unavailable(sock, req, exc)
        if not isinstance(decision, Target):
            return None
        return self._serve(sock, req, decision, _FALLBACK_KEY)

    # -- deciding, with the cache --------------------------------------------------
    def _decide(self, key: Hashable, decide: Callable[[], Decision]) -> Decision | Target:
        hit = self.cache.get(key)
        if hit is not None and hit[1]:
            return hit[0]
        decision = decide()
        if isinstance(decision, File):
            stale = hit[0] if hit is not None and isinstance(hit[0], Target) else None
            target = self._target(decision, stale)
            self.cache.put(key, target, target.cached_bytes)
            return target
        self.cache.put(key, decision)
        return decision

    def _target(self, file: File, stale: Target | None) -> Target:
        nodes: dict[str | None, Node] = {None: file.node}
        if self.opts.precompressed:
            for coding, suffix in SUFFIXES.items():
                node = self.fs.lookup(file.fs_path + suffix)
                if node is not None and node.kind == FILE and not admit(node, self.root,
                                                                        self.opts):
                    nodes[coding] = node
        vary = len(nodes) > 1
        ctype = content_type(file.name)
        old = stale.variants if stale is not None else {}
        return Target({coding: self._variant(node, ctype, coding, vary, old.get(coding))
                       for coding, node in nodes.items()})

    def _variant(self, node: Node, ctype: bytes, coding: str | None, vary: bool,
                 old: Variant | None) -> Variant:
        ident = identity(node.stat)
        if old is not None and old.rep.identity == ident and old.rep.vary == vary \
                and old.rep.real == node.real:
            return Variant(node, old.rep)  # unchanged: keep its head lines and bytes
        rep = self._describe(node, node.stat, ctype, coding, vary)
        if rep.size <= SMALL_FILE:
            rep.content = self.fs.read_small(node, SMALL_FILE)
        return Variant(node, rep)

    def _describe(self, node: Node, st: os.stat_result, ctype: bytes, coding: str | None,
                  vary: bool) -> Representation:
        return describe(node.real, st, identity(st), content_type=ctype, coding=coding,
                        cache_control=self.opts.cache_control, vary=vary, now=time.time())

    # -- responses ---------------------------------------------------------------
    def _serve(self, sock, req: Request, target: Target, key: Hashable) -> Result:
        coding = None
        if len(target.variants) > 1:
            coding = choose_encoding(req.header(b"accept-encoding"), target.variants)
        variant = target.variants[coding]
        rep, fd = variant.rep, None
        if req.method == "GET" and rep.content is None:
            try:
                fd, st = self.fs.open_file(variant.node)
            except (Changed, OSError) as exc:
                self.cache.discard(key)
                return self._open_failed(sock, req, exc, key)
            if identity(st) != rep.identity:
                # Changed since it was cached: describe what we actually opened,
                # so the head matches the bytes, and resolve afresh next time.
                self.cache.discard(key)
                rep = self._describe(variant.node, st, rep.content_type, rep.coding, rep.vary)
        try:
            return self._send(sock, req, rep, evaluate(req.method, req.header, rep.validators),
                              fd)
        finally:
            if fd is not None:
                os.close(fd)

    def _send(self, sock, req: Request, rep: Representation, outcome: Outcome,
              fd: int | None) -> tuple[int, int]:
        status, keep_alive = outcome.status, req.keep_alive
        if status == NOT_MODIFIED:
            send_all(sock, head(NOT_MODIFIED, rep.validator_lines, date=pages.http_date(),
                              keep_alive=keep_alive))
            return NOT_MODIFIED, 0
        if status not in (200, PARTIAL):
            # 412, or 416 with the size the client should have asked within (§15.5.17).
            extra = (("Content-Range", f"bytes */{rep.size}"),) if status == NOT_SATISFIABLE \
                else ()
            return self._page(sock, req, status, extra)
        lines = body_lines(rep, outcome.start, outcome.end, status == PARTIAL)
        response_head = head(status, lines, date=pages.http_date(), keep_alive=keep_alive)
        if req.method == "HEAD":
            send_all(sock, response_head)
            return status, 0
        if rep.content is not None:
            # One send for head and body: no second syscall, no Nagle delay.
            body = memoryview(rep.content)[outcome.start:outcome.end]
            send_all(sock, b"".join((response_head, body)))
            return status, outcome.length
        send_head(sock, response_head, file_follows=outcome.length > 0)
        sent = send_file(sock, fd, outcome.start, outcome.length)
        if sent < outcome.length:
            # Content-Length promised more than the file now holds: the only
            # honest end is to close the connection (RFC 9112 §6.3 framing).
            raise ConnectionAbortedError(f"{rep.real} shrank while being sent")
        return status, sent

    def _page(self, sock, req: Request, status: int,
              headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, int]:
        head_only = req.method == "HEAD"
        body = pages.page(status)
        send_all(sock, pages.response(status, body, keep_alive=req.keep_alive,
                                    head_only=head_only, headers=headers))
        return status, 0 if head_only else len(body)

    def _refuse(self, sock, req: Request, refusal: Refuse, key: Hashable) -> tuple[int, int]:
        req.extra["static_reason"] = refusal.reason  # for the error log; never to the client
        return self._page(sock, req, refusal.status)

    def _open_failed(self, sock, req: Request, exc: Exception, key: Hashable) -> Result:
        if isinstance(exc, (Changed, PermissionError)):
            return self._refuse(sock, req, Refuse(FORBIDDEN, str(exc)), key)
        if isinstance(exc, OSError) and exc.errno in EXHAUSTED:
            return self._unavailable(sock, req, exc)
        return None  # gone since it was resolved: as if it never existed

    def _unavailable(self, sock, req: Request, exc: OSError) -> tuple[int, int]:
        # Out of descriptors or memory: the file may well exist, so neither a
        # 404 nor a cached answer; 503 tells the client to come back.
        req.extra["static_reason"] = f"cannot open files: {exc}"
        return self._page(sock, req, 503)

    def _redirect(self, sock, req: Request, redirect: Redirect, key: Hashable) -> tuple[int, int]:
        location = redirect.location
        # Keep the query (it may matter to the page), but only if it is plain
        # visible ASCII: nothing that could bend the header line.
        if req.query and all(0x21 <= b <= 0x7E for b in req.query):
            location += "?" + req.query.decode("ascii")
        head_only = req.method == "HEAD"
        body = pages.page(301)
        send_all(sock, pages.response(301, body, keep_alive=req.keep_alive, head_only=head_only,
                                    headers=(("Location", location),)))
        return 301, 0 if head_only else len(body)

    def _list(self, sock, req: Request, page: Listing, key: Hashable) -> tuple[int, int]:
        body = listing.render(page.path, listing.scan(page.node.real, self.root, self.opts))
        head_only = req.method == "HEAD"
        send_all(sock, pages.response(200, body, keep_alive=req.keep_alive, head_only=head_only))
        return 200, 0 if head_only else len(body)
