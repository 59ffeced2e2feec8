"""The compiled routing table: which route answers a path, which instance a Host.

``RouteTable`` compiles one instance's routes into a segment trie once per
config (SPEC §4), so a lookup walks the path's segments, not the route list.
``VirtualHosts`` picks the instance for a Host header among those sharing one
listening address (a ``NameTable``, which also picks an HTTPS redirect's
port). Tables are built eagerly: ``listeners(config)`` compiles every
instance's table when the master calls it, before fork, so a bad pattern fails
at load time and the workers share one copy; ``VirtualHosts.table()`` hands
out the instance's table.

Choices SPEC §4 leaves open: a pattern's trailing slash is ignored ("/api/"
is "/api"); specificity is the count of characters that are not "*" or "?"
(slashes included), then the fewest wildcards, then the fewest "**"; a GET
route also answers HEAD; methods and paths compare case-sensitively.

Pure: no sockets, no gevent, no I/O. Paths given to ``match`` are already
normalized (``urlpath.normalize``): they start with "/" and hold no empty,
``.`` or ``..`` segments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Generic, TypeVar

from .model import Config, Instance, Route

T = TypeVar("T")

DEEP = "**"
_WILDCARD = re.compile(r"\*+|\?")


@dataclass(frozen=True, slots=True)
class Match:
    """The winning route and how many leading literal segments its pattern has.

    ``strip_segments`` is the part ``strip_prefix`` or a destination base path
    replaces, and WSGI's ``SCRIPT_NAME``: "/api/v1/*.js" has 2, "/**/x" has 0.
    """

    route: Route
    strip_segments: int


def pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` is not a route path (SPEC §4), or None when it is one.

    The one rule set: the validator reports it against the config file's line,
    and ``RouteTable`` refuses a pattern that reached it some other way.
    """
    if not pattern.startswith("/"):
        return 'must start with "/"'
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in pattern):
        return "must not contain spaces or control characters"
    segments = pattern.split("/")[1:]
    if "" in segments[:-1]:
        return "must not contain an empty segment (//)"
    if "." in segments or ".." in segments:
        return "must not contain . or .. segments (requests are matched after resolving them)"
    if any(DEEP in s and s != DEEP for s in segments):  # "a**b" would only mean "a*b"
        return "** must be a whole segment (/a/**/b)"
    return None


def _pattern_segments(pattern: str) -> list[str]:
    error = pattern_error(pattern)
    if error:
        raise ValueError(f"route path {pattern!r}: {error}")
    segments: list[str] = []
    for segment in pattern.split("/"):
        # Skips the empty segments before the first "/" and after a trailing one;
        # "/a/**/**" is "/a/**".
        if segment and not (segment == DEEP and segments[-1:] == [DEEP]):
            segments.append(segment)
    # Every pattern matches everything below what it matched, so a trailing
    # "*" or "**" adds nothing: "/x/*" is "/x" and "/*" is "/" (SPEC §4).
    while segments and segments[-1] in ("*", DEEP):
        segments.pop()
    return segments


def _is_glob(segment: str) -> bool:
    return "*" in segment or "?" in segment


def _glob_regex(segment: str) -> re.Pattern[str]:
    """``*`` is any run of characters within the segment, ``?`` exactly one."""
    out = []
    for char in segment:
        if char == "*":
            if out[-1:] != [".*"]:
                out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


class _Node:
    """One trie position: children by literal segment, by glob, and a ``**`` child."""

    __slots__ = ("any_method", "closure", "deep", "entries", "globs", "hits", "literals",
                 "loops", "plain", "solo", "width")

    def __init__(self, loops: bool = False) -> None:
        self.literals: dict[str, _Node] = {}
        self.globs: dict[str, tuple[re.Pattern[str], _Node]] = {}
        self.deep: _Node | None = None
        self.loops = loops  # a "**" node: it also consumes any segment itself
        self.entries: list[_Entry] = []  # routes whose pattern ends here, best first
        self.closure: tuple[_Node, ...] = (self,)  # self plus what "**" reaches free
        self.plain = True  # literal children only: the walk's fast path
        # Set once the trie is built (``RouteTable``), so the walk makes no calls for them:
        self.hits: tuple[_Node, ...] = ()  # the closure's nodes that end a pattern
        self.width = 1  # len(closure)
        self.solo = True  # the closure is this plain node alone
        self.any_method: _Entry | None = None  # the best entry, when it takes any method

    def child(self, segment: str) -> _Node:
        if segment == DEEP:
            if self.deep is None:
                self.deep = _Node(loops=True)
            return self.deep
        if _is_glob(segment):
            if segment not in self.globs:
                self.globs[segment] = (_glob_regex(segment), _Node())
            return self.globs[segment][1]
        return self.literals.setdefault(segment, _Node())

    def nodes(self) -> Iterator[_Node]:
        yield self
        children = chain(self.literals.values(), (n for _, n in self.globs.values()))
        for node in chain(children, [self.deep] if self.deep else []):
            yield from node.nodes()


@dataclass(frozen=True, slots=True)
class _Entry:
    match: Match
    methods: frozenset[str] | None
    rank: tuple[int, int, int, int, int]  # smaller is better


def _entry(route: Route, segments: list[str]) -> _Entry:
    text = "/" + "/".join(segments)
    wildcards = len(_WILDCARD.findall(text))  # "**" and "a*b*" count per run of "*"
    # "Longest literal part" counts the characters a pattern pins down, slashes
    # included: "/assets/*.js" (11) is more specific than "/assets" (7).
    literal = len(text) - text.count("*") - text.count("?")
    prefix = 0
    while prefix < len(segments) and not _is_glob(segments[prefix]):
        prefix += 1
    methods = route.methods
    # A GET route also answers HEAD (RFC 9110 §9.3.2), as nginx's limit_except does.
    if methods is not None and "GET" in methods:
        methods = methods | {"HEAD"}
    # Among equals a "**" is the wider wildcard: "/a/*/b" beats "/a/**/b".
    rank = (-route.priority, -literal, wildcards, segments.count(DEEP), route.index)
    return _Entry(Match(route, prefix), methods, rank)


class RouteTable:
    """One instance's routes, compiled; ``match`` cost grows with path depth only."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._root = _Node()
        for route in self.routes:
            segments = _pattern_segments(route.path)
            node = self._root
            for segment in segments:
                node = node.child(segment)
            node.entries.append(_entry(route, segments))
        for node in self._root.nodes():
            node.entries.sort(key=attrgetter("rank"))
            if node.deep is not None:
                node.closure = (node, node.deep)
            node.plain = not (node.globs or node.deep or node.loops)
        for node in self._root.nodes():
            node.hits = tuple(n for n in node.closure if n.entries)
            node.width = len(node.closure)
            node.solo = node.width == 1 and node.plain
            if node.entries and node.entries[0].methods is None:
                node.any_method = node.entries[0]

    def match(self, method: str, path: str) -> Match | None:
        """The best route for ``path`` that accepts ``method``, or None."""
        best: _Entry | None = None
        for node in self._walk(path)[0]:
            entry = node.any_method or _first_accepting(node.entries, method)
            if entry is not None and (best is None or entry.rank < best.rank):
                best = entry
        return None if best is None else best.match

    def allowed(self, path: str) -> frozenset[str]:
        """Methods the routes matching ``path`` name: the 405 ``Allow`` header.

        Routes accepting every method add nothing; when one matches, ``match``
        never returns None for this path and no 405 is sent.
        """
        found: set[str] = set()
        for node in self._walk(path)[0]:
            for entry in node.entries:
                found |= entry.methods or set()
        return frozenset(found)

    def _walk(self, path: str) -> tuple[list[_Node], int]:
        """Trie nodes ending a pattern that matches ``path``, and how many nodes were visited.

        A set of trie positions advances one segment at a time (globs and
        "**" can hold several); each position reached that ends a pattern
        counts, since a pattern matches everything below it.
        """
        trimmed = path.strip("/")
        node: _Node | None = self._root
        states = node.closure
        visited = node.width
        hits = [*node.hits]
        for segment in trimmed.split("/") if trimmed else ():
            if node is not None and node.solo:
                # The common case, literal routes only: one dict look-up a segment, and
                # what the trie holds for the node found (no call).
                literals = node.literals
                if segment not in literals:
                    break
                node = literals[segment]
                states = node.closure
                visited += node.width
                hits += node.hits
                continue
            node = None  # several positions from here on: the general step
            states = _step(states, segment)
            if not states:
                break
            visited += len(states)
            hits.extend([n for n in states if n.entries])
        return hits, visited


def _step(states: Sequence[_Node], segment: str) -> list[_Node]:
    """The trie positions reached from ``states`` by consuming ``segment``."""
    following: list[_Node] = []
    for node in states:
        child = node.literals.get(segment)
        if child is not None:
            following.extend(child.closure)
        for regex, glob_child in node.globs.values():
            if regex.fullmatch(segment):
                following.extend(glob_child.closure)
        if node.loops:
            following.append(node)
    return list(dict.fromkeys(following)) if len(following) > 1 else following


def _first_accepting(entries: list[_Entry], method: str) -> _Entry | None:
    """The best of one node's entries (they are sorted) that accepts ``method``."""
    for entry in entries:
        if entry.methods is None or method in entry.methods:
            return entry
    return None


class NameTable(Generic[T]):
    """Values chosen by host name like nginx's ``server_name``.

    Exact names first, then ``*.example.com`` wildcards (longest suffix wins;
    it does not match ``example.com`` itself), then the first value without
    names, else the first value: the default. Used for the instances of a
    listener and for the port an HTTPS redirect goes to.
    """

    def __init__(self, entries: Sequence[tuple[Sequence[str], T]]) -> None:
        if not entries:
            raise ValueError("NameTable needs at least one entry")
        self._exact: dict[str, T] = {}
        self._suffixes: dict[str, T] = {}  # ".example.com" -> value
        for names, value in entries:
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self._suffixes.setdefault(name[1:], value)
                else:
                    self._exact.setdefault(name, value)
        unnamed = [value for names, value in entries if not names]
        self.default: T = unnamed[0] if unnamed else entries[0][1]
        self._single = len(entries) == 1

    def select(self, host: str) -> T:
        """The value for ``host`` (lower-case, without port; "" when absent)."""
        if self._single:
            return self.default
        host = host.rstrip(".")  # "example.com." is the same name (RFC 1034 §3.1)
        found = self._exact.get(host)
        if found is not None:
            return found
        # Suffixes from the longest down; starting at 1 keeps a label before the dot.
        dot = host.find(".", 1)
        while dot != -1 and self._suffixes:
            found = self._suffixes.get(host[dot:])
            if found is not None:
                return found
            dot = host.find(".", dot + 1)
        return self.default


class VirtualHosts:
    """The instances sharing one listener, chosen by Host (``NameTable``)."""

    def __init__(self, instances: Sequence[Instance]) -> None:
        if not instances:
            raise ValueError("VirtualHosts needs at least one instance")
        self.instances = tuple(instances)
        names = NameTable([(i.server_names, i) for i in self.instances])
        self.default = names.default
        self.select = names.select
        self._tables = {i.index: RouteTable(i.routes) for i in self.instances}

    def table(self, instance: Instance) -> RouteTable:
        """The compiled routes of one of this listener's instances."""
        return self._tables[instance.index]


def listeners(config: Config) -> dict[tuple[str, int], VirtualHosts]:
    """Instances grouped by listening address (host, port), in file order."""
    groups: dict[tuple[str, int], list[Instance]] = {}
    for instance in config.instances:
        groups.setdefault(instance.address, []).append(instance)
    return {address: VirtualHosts(group) for address, group in groups.items()}
