"""``StaticSite``: GET and HEAD for the files under one instance's ``public`` root.

The one module of rex_static that makes responses. It asks the pure modules
what to do (``resolve``: which file or refusal; ``negotiate``: which encoding;
``conditional``: which status and bytes), the file system for facts
(``files``, ``listing``), and hands each response to the request's stream:
small bodies as bytes, large ones as a ``FileRegion`` the connection sends
with sendfile (``sendfile.py``). Small files (≤ ``SMALL_FILE``) and every
file's header fields are kept in a short-lived cache, so a hot file costs no
system call but the send; a small file's plain GET or HEAD (no preconditions,
no Range, no filters) is answered from its ready response (``ready.py``)
before any other work.

The connection owns the request: its body, framing, keep-alive, timeouts and
the access log. ``handle`` and ``fallback`` each hand over one whole response
and return True, or return False ("not mine, try the routes").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rex_workers.http import pages
from rex_workers.http.message import FileRegion, Response, Stream

from . import listing
from .cache import TTLCache
from .conditional import NOT_MODIFIED, NOT_SATISFIABLE, OK, PARTIAL, Outcome, evaluate
from .files import EXHAUSTED, Changed, FileSystem, identity
from .mime import content_type
from .negotiate import SUFFIXES, choose_encoding
from .ready import HEAD_START, HotFile, Ready, SecondDate
from .representation import Representation, content_range, describe
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
    below_mount,
    fallback_file,
    looks_like_client_route,
    path_problem,
    raw_path_problem,
    remount,
    resolve,
)

if TYPE_CHECKING:
    from rex_workers.config.model import StaticOptions

# Metadata may be this many seconds old: a changed file is seen within a
# second, while a hot path costs one resolution per second, not per request.
CACHE_TTL = 1.0
SMALL_FILE = 64 * 1024  # bodies up to this size are kept in memory and sent with the head
CACHE_ENTRIES = 4096
CACHE_BYTES = 32 * 1024 * 1024  # per worker and site: the bodies of small files

_METHODS = ("GET", "HEAD")
_FALLBACK_KEY = ("fallback",)  # cache key of the SPA document; paths are str, never tuples


@dataclass(slots=True)
class Variant:
    node: Node
    rep: Representation
    ready: Ready | None = None  # a small file's 200, rendered (``ready.py``)


@dataclass(slots=True)
class Target:
    """A file ready to serve: the plain variant (key None) and precompressed ones."""

    variants: dict[str | None, Variant]
    hot: str | None = None  # the request path of its HotFile, if it has one

    @property
    def cached_bytes(self) -> int:
        return sum(len(v.rep.content or b"") + (v.ready.size if v.ready else 0)
                   for v in self.variants.values())


class StaticSite:
    def __init__(self, root: str, opts: StaticOptions, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = os.path.realpath(root)  # "public" may itself be a symlink
        self.opts = opts
        self.fs = FileSystem(self.root, opts.follow_symlinks)
        self.clock = clock
        self.cache = TTLCache(CACHE_TTL, CACHE_ENTRIES, CACHE_BYTES, clock, self._dropped)
        # Request path -> HotFile: the small files a plain GET/HEAD gets from memory.
        self.hot: dict[str, HotFile] = {}
        self.date = SecondDate()
        self._responders = {
            Refuse: self._refuse,
            Redirect: self._redirect,
            Listing: self._list,
            Target: self._serve,
        }

    # -- the two entry points -------------------------------------------------
    def handle(self, stream: Stream, mount_segments: int = 0) -> bool:
        """Answer a GET/HEAD from the files; False when there is no file for the path.

        ``mount_segments``: a ``static:`` route's literal prefix, which the
        root stands for (the request path below it is looked up).
        """
        req = stream.request
        if req.method not in _METHODS:
            return False
        hot = self.hot.get(req.path)
        if hot is not None:
            # The fast lane (``ready.py``): a path vetted and resolved within the TTL,
            # with the same raw spelling and mount, asked without preconditions or a
            # Range (``conditional`` is False only where the fast lane saw the whole
            # head), and no filter to see the response: the ready bytes, one send.
            now = self.clock()
            if now < hot.expires and req.raw_path == hot.raw and mount_segments == hot.mount \
                    and not req.conditional and not stream.filters:
                ready = hot.single or hot.ready[choose_encoding(req.header(b"accept-encoding"),
                                                                hot.ready)]
                date = self.date.value if now < self.date.until else self.date.tick(now)
                stream.respond_ready(200, HEAD_START + date + ready.fields, ready.body,
                                     ready.length)
                return True
        # req.path comes normalised from the handler; it is checked again here so
        # that no single bug there can open the file system.
        problem = path_problem(req.path)
        if problem is not None:
            self._refuse(stream, Refuse(FORBIDDEN, problem), req.path)
            return True
        # A raw spelling no browser sends (dot-segments, encoded dots, backslashes)
        # never reads the file system, and never decides the request either: the
        # root steps aside as if it had no file, so the routes answer exactly as
        # they would on an instance without `public` (docs/static.md).
        if raw_path_problem(req.raw_path) is not None:
            return False
        mount, path = below_mount(req.path, mount_segments) if mount_segments else ("", req.path)
        try:
            decision = (self._decide(path, lambda: resolve(self.root, path, self.opts,
                                                           self.fs.lookup))
                        if path else Redirect("/"))  # the mount itself: a directory
        except OSError as exc:
            self._unavailable(stream, exc)
            return True
        if decision is None:
            return False
        if type(decision) is Target:
            if decision.hot is None:
                self._make_hot(decision, req.path, req.raw_path, mount_segments, path)
        elif mount:
            decision = remount(decision, mount)
        return self._responders[type(decision)](stream, decision, path) is not False

    def fallback(self, stream: Stream) -> bool:
        """The SPA document for a client-side route nothing else answered, or False."""
        req = stream.request
        name = self.opts.fallback
        if not name or req.method not in _METHODS:
            return False
        if not looks_like_client_route(req.path, req.header(b"accept")):
            return False
        if raw_path_problem(req.raw_path) or path_problem(req.path):
            return False
        try:
            decision = self._decide(_FALLBACK_KEY, lambda: fallback_file(
                self.root, name, self.opts, self.fs.lookup))
        except OSError as exc:
            self._unavailable(stream, exc)
            return True
        if not isinstance(decision, Target):
            return False
        return self._serve(stream, decision, _FALLBACK_KEY) is not False

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

    def _make_hot(self, target: Target, path: str, raw: bytes, mount: int,
                  key: Hashable) -> None:
        """Answer plain requests for ``path`` from ``target``'s ready responses from now on.

        Only for a path spelt as it is meant (the raw path is the normalised one:
        one entry per file, not one per spelling a client can invent), and only
        when every representation is in memory.
        """
        expires = self.cache.expires(key)
        if expires is None or raw != path.encode("utf-8"):
            return
        ready = {coding: v.ready for coding, v in target.variants.items()}
        if None in ready.values():
            return
        target.hot = path
        self.hot[path] = HotFile(expires, raw, mount, ready, target)

    def _dropped(self, value: object) -> None:
        """The cache let ``value`` go: so does the fast lane (``TTLCache.on_drop``)."""
        if type(value) is Target and value.hot is not None:
            hot = self.hot.get(value.hot)
            if hot is not None and hot.target is value:
                del self.hot[value.hot]

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
            return Variant(node, old.rep, old.ready)  # unchanged: keep its head and bytes
        rep = self._describe(node, node.stat, ctype, coding, vary)
        ready = None
        if rep.size <= SMALL_FILE:
            rep.content = self.fs.read_small(node, SMALL_FILE)
            if rep.content is not None:
                ready = Ready(rep.validator_fields + rep.content_fields, rep.content)
        return Variant(node, rep, ready)

    def _describe(self, node: Node, st: os.stat_result, ctype: bytes, coding: str | None,
                  vary: bool) -> Representation:
        return describe(node.real, st, identity(st), content_type=ctype, coding=coding,
                        cache_control=self.opts.cache_control, vary=vary, now=time.time())

    # -- responses ---------------------------------------------------------------
    # Each hands one response to the stream; only ``_serve`` may return False
    # (the file vanished since it was resolved: as if it never existed).
    def _serve(self, stream: Stream, target: Target, key: Hashable) -> bool | None:
        req = stream.request
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
                return self._open_failed(stream, exc)
            if identity(st) != rep.identity:
                # Changed since it was cached: describe what we actually opened,
                # so the head matches the bytes, and resolve afresh next time.
                self.cache.discard(key)
                rep = self._describe(variant.node, st, rep.content_type, rep.coding, rep.vary)
        try:
            # A request without preconditions or a Range (``conditional`` is False only
            # where the fast lane saw the whole head) gets the whole file.
            outcome = evaluate(req.method, req.header, rep.validators) if req.conditional \
                else Outcome(OK, 0, rep.size)
            self._send(stream, rep, outcome, fd)
        finally:
            if fd is not None:
                os.close(fd)
        return None

    def _send(self, stream: Stream, rep: Representation, outcome: Outcome,
              fd: int | None) -> None:
        status = outcome.status
        if status == NOT_MODIFIED:
            stream.respond(Response(NOT_MODIFIED, pages.origin_fields() + rep.validator_fields,
                                    b"", None))
            return
        if status not in (200, PARTIAL):
            # 412, or 416 with the size the client should have asked within (§15.5.17).
            extra = (("Content-Range", f"bytes */{rep.size}"),) if status == NOT_SATISFIABLE \
                else ()
            stream.respond(pages.response(status, headers=extra))
            return
        fields = pages.origin_fields()
        fields += rep.validator_fields
        fields += rep.content_fields
        if status == PARTIAL:
            fields.append(content_range(rep, outcome.start, outcome.end))
        if stream.request.method == "HEAD":
            body = b""
        elif rep.content is not None:
            body = memoryview(rep.content)[outcome.start:outcome.end]
        else:
            body = FileRegion(fd, outcome.start, outcome.length)
        stream.respond(Response(status, fields, body, outcome.length))

    def _refuse(self, stream: Stream, refusal: Refuse, key: Hashable) -> None:
        stream.outcome.note = refusal.reason  # for the error log; never to the client
        stream.respond(pages.response(refusal.status))

    def _open_failed(self, stream: Stream, exc: Exception) -> bool | None:
        if isinstance(exc, (Changed, PermissionError)):
            return self._refuse(stream, Refuse(FORBIDDEN, str(exc)), None)
        if isinstance(exc, OSError) and exc.errno in EXHAUSTED:
            return self._unavailable(stream, exc)
        return False  # gone since it was resolved: as if it never existed

    def _unavailable(self, stream: Stream, exc: OSError) -> None:
        # Out of descriptors or memory: the file may well exist, so neither a
        # 404 nor a cached answer; 503 tells the client to come back.
        stream.outcome.note = f"cannot open files: {exc}"
        stream.respond(pages.response(503))

    def _redirect(self, stream: Stream, redirect: Redirect, key: Hashable) -> None:
        req = stream.request
        location = redirect.location
        # Keep the query (it may matter to the page), but only if it is plain
        # visible ASCII: nothing that could bend the header line.
        if req.query and all(0x21 <= b <= 0x7E for b in req.query):
            location += "?" + req.query.decode("ascii")
        stream.respond(pages.response(301, headers=(("Location", location),)))

    def _list(self, stream: Stream, page: Listing, key: Hashable) -> None:
        body = listing.render(page.path, listing.scan(page.node.real, self.root, self.opts))
        stream.respond(pages.response(200, body))
