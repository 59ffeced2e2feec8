"""Property-based fuzzing of the request path: head parser, path normalisation, routing, static.

Hypothesis generates hostile input from a grammar of the pieces request
smuggling and path traversal are made of (odd Transfer-Encoding spellings,
duplicate Content-Length, bare LF, ``%2e%2e``, ``%c0%ae``, ``**`` patterns...)
and mutates it; every property below must hold for every input:

- ``h1read.RequestReader``: only ``HTTPError`` with a 4xx/5xx status escapes;
  every parsed head is unambiguous (never both Content-Length and chunked, one
  Host, token method, absolute path); and the outcome does not depend on how
  TCP cut the bytes (fed whole or in arbitrary pieces, the same events come out).
- ``urlpath.normalize``: 400 or a canonical path (no empty, ``.`` or ``..``
  segment, no NUL/CR/LF) that is a fixed point once encoded again; ``rewrite``
  swaps exactly the matched segments.
- ``routing.RouteTable.match``: never raises; its answer agrees with a
  reference matcher written from SPEC §4 (segment prefixes, ``*``, ``**``,
  priority, then longest literal part, fewest wildcards, then file order).
- ``rex_static.resolve``: whatever the raw path, nothing outside the root of a
  real directory tree (with a symlink leading out, a sibling directory whose
  name extends the root's, and dotfiles) is ever served, listed or redirected to.
- One real worker (module fixture) gets generated raw requests over TCP: it
  always answers with strict HTTP/1.1 or closes, never hangs, and its strict
  recording upstream never sees a request with both Content-Length and
  Transfer-Encoding, or more requests than the client got answers.

In CI each property runs a few hundred examples (the file takes seconds).
To fuzz longer, set ``REX_FUZZ_EXAMPLES`` (examples per property), e.g.
``REX_FUZZ_EXAMPLES=100000 python -m pytest tests/test_fuzz.py -p no:cacheprovider``;
hypothesis keeps any failing input in ``.hypothesis/`` and replays it first.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import socket
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import read_until_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_strict import StrictUpstream, Violation, take

from rex_static.files import FileSystem
from rex_static.resolve import (
    File,
    Listing,
    Redirect,
    Refuse,
    fallback_file,
    inside,
    path_problem,
    raw_path_problem,
    resolve,
)
from rex_workers.config.model import Route, StaticOptions
from rex_workers.config.routing import RouteTable
from rex_workers.http import framing
from rex_workers.http.framing import BODY, END, HEAD, UPGRADE
from rex_workers.http.h1read import RequestReader
from rex_workers.http.request import HTTPError, Request
from rex_workers.http.urlpath import PATH_SAFE, normalize, rewrite

EXAMPLES = int(os.environ.get("REX_FUZZ_EXAMPLES", "0"))
# A protocol error is raised by ``feed`` or queued as a FAIL event after the
# requests parsed before it (pipelining); the properties accept either form.
FAIL = getattr(framing, "FAIL", None)


def fuzz(ci_examples: int) -> settings:
    """``ci_examples`` in CI, ``REX_FUZZ_EXAMPLES`` when set; never a deadline (CI is noisy)."""
    return settings(max_examples=EXAMPLES or ci_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the grammar of hostile requests -------------------------------------------------------

CRLF = b"\r\n"
METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"PROPFIND", b"CONNECT",
           b"PRI", b"get", b"G\x00T", b"GET GET", b"", b"M-SEARCH", b"GPOST"]
SEGMENTS = [b"a", b"api", b"x.js", b"..", b".", b"", b"%2e", b"%2E%2e", b"%2f", b"%2F..",
            b"%252e%252e", b"%", b"%zz", b"%00", b"%0d%0a", b"%c0%ae", b"\xc3\xa9", b"\xff",
            b"%5c..", b"\\..", b"C:", b";x", b"~", b"a b", b".well-known", b".env"]
TARGETS = [b"*", b"http://h/x", b"HTTP://H/", b"https://h", b"http://", b"http://u@h/",
           b"ftp://h/", b"h:443", b"//evil/x", b"/a#b", b"/a?b=c&d", b"/?", b"x"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1",
            b"HTTP/1.1 ", b"HTTP1.1", b""]
NAMES = [b"Host", b"host", b"Content-Length", b"content-length", b"Transfer-Encoding",
         b"TRANSFER-ENCODING", b"Connection", b"Upgrade", b"Expect", b"Trailer", b"X-A",
         b"Host ", b" Host", b"Content-Length\t", b"Transfer_Encoding", b"Tr\x00nsfer-Encoding",
         b""]
VALUES = [b"a", b"a:80", b"[::1]", b"a/b", b"a@b", b"", b"0", b"3", b"5", b"-1", b"1e2",
          b"3, 3", b" 3", b"0x3", b"99999999999999999999", b"chunked", b" chunked",
          b"chunked ", b"identity", b"gzip, chunked", b"chunked, chunked", b",chunked",
          b"\x0bchunked", b'"chunked"', b"CHUNKED", b"chunked;q=1", b"close", b"keep-alive",
          b"Upgrade", b"Content-Length", b"websocket", b"h2c", b"100-continue",
          b"v\r\n x", b"\x00", b"\xff"]
SEPARATORS = [b": ", b":", b" : ", b":\t", b": \t"]
ODD_EOLS = [b"\n", b"\r", b"\r\r\n", b"\n\r", b""]
BODIES = [b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n", b"3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
          b"zz\r\n", b"ffffffffffffffffff\r\n", b"3\nabc\n0\n\n", b"3\r\nabcd\r\n0\r\n\r\n",
          b"0\r\nContent-Length: 5\r\n\r\n", b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
          b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"]

eols = st.one_of(st.just(CRLF), st.just(CRLF), st.just(CRLF), st.sampled_from(ODD_EOLS))
paths = st.lists(st.sampled_from(SEGMENTS), max_size=6).map(lambda s: b"/" + b"/".join(s))


@st.composite
def messages(draw) -> bytes:
    method = draw(st.one_of(st.sampled_from(METHODS), st.binary(max_size=6)))
    target = draw(st.one_of(paths, paths, st.sampled_from(TARGETS)))
    version = draw(st.sampled_from(VERSIONS))
    out = [method + b" " + target + b" " + version + draw(eols)]
    if draw(st.booleans()):
        out.append(b"Host: a" + draw(eols))  # most real requests have one
    for name, sep, value, eol in draw(st.lists(st.tuples(
            st.sampled_from(NAMES), st.sampled_from(SEPARATORS), st.sampled_from(VALUES), eols),
            max_size=5)):
        out.append(name + sep + value + eol)
    out.append(draw(eols))
    out.append(draw(st.sampled_from(BODIES)))
    return b"".join(out)


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """``base``, then a few bytes inserted, replaced or removed anywhere."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(b"\r\n\0 \t:;,\"\x0b\x7f\xff0aA"))
        kind = draw(st.sampled_from(["insert", "replace", "delete"]))
        if kind == "insert" or not data:
            data[at:at] = bytes([byte])
        elif kind == "replace":
            data[min(at, len(data) - 1)] = byte
        else:
            del data[min(at, len(data) - 1)]
    return bytes(data)


pipelines = st.lists(messages(), min_size=1, max_size=3).map(b"".join)
raw_requests = st.one_of(pipelines, mutated(pipelines), st.binary(max_size=200))


# -- the request head parser -------------------------------------------------------------

LIMIT = 16 * 1024
TCHAR = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


def parse(chunks: list[bytes]) -> tuple[list[tuple], int | None]:
    """Feed ``chunks`` to one reader: (events with bodies merged, error status or None)."""
    reader = RequestReader(LIMIT)
    events: list[tuple] = []
    error = None
    for i, chunk in enumerate(chunks):
        try:
            reader.feed(chunk)
        except HTTPError as exc:
            error = exc.status
        while reader.events:
            kind, payload = reader.events.popleft()
            if kind == HEAD:
                check_request(payload)
                events.append(("head", describe(payload)))
            elif kind == BODY:
                if events and events[-1][0] == "body":
                    events[-1] = ("body", events[-1][1] + payload)
                else:
                    events.append(("body", payload))
            elif kind == END:
                events.append(("end", tuple(payload)))
            elif kind == FAIL:
                error = payload.status
            elif kind == UPGRADE:
                # What a tunnel would carry: the rest of this read and all that follows.
                events.append(("upgrade", payload + b"".join(chunks[i + 1:])))
        if error is not None or reader.upgraded or getattr(reader, "failed", False):
            break
    return events, error


def describe(req: Request) -> tuple:
    return (req.method, req.target, req.version, tuple(req.headers), req.host, req.keep_alive,
            req.content_length, req.chunked, req.upgrade, req.raw_path, req.query)


def check_request(req: Request) -> None:
    """What any head the reader lets through must satisfy (RFC 9112 §3, §6)."""
    assert req.method and set(req.method.encode()) <= TCHAR
    assert not (req.content_length is not None and req.chunked), "both CL and chunked"
    assert req.raw_path[:1] == b"/"
    assert req.version in ("1.0", "1.1")
    names = [name.lower() for name, _ in req.headers]
    assert names.count(b"host") == (1 if req.version == "1.1" else names.count(b"host"))
    assert names.count(b"host") <= 1
    assert names.count(b"content-length") == (req.content_length is not None)
    assert (b"transfer-encoding" in names) == req.chunked
    for name, value in req.headers:
        assert name and set(name) <= TCHAR
        assert not set(value) & set(b"\r\n\0")
    try:
        normalize(req.raw_path)
    except HTTPError as exc:
        assert exc.status == 400


@fuzz(400)
@given(data=raw_requests, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_request_reader_is_strict_and_blind_to_segmentation(data, cuts):
    whole = parse([data])
    split = parse(pieces(data, cuts))
    if whole[1] is not None:
        assert whole[1] in (400, 405, 413, 414, 431, 501, 505)
    assert split == whole


def test_request_reader_properties_see_the_interesting_cases():
    """The grammar above reaches both sides of the parser: accepted heads and each refusal."""
    accepted = parse([b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\n\r\n"])
    assert accepted[1] is None and accepted[0][1] == ("body", b"abc")
    assert parse([b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n"])[1] == 400
    refused = parse([b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n"])
    assert refused[1] in (400, 501)


# -- path normalisation and rewriting ------------------------------------------------------

raw_paths = st.one_of(paths, mutated(paths), st.binary(max_size=40).map(lambda b: b"/" + b))


@fuzz(500)
@given(raw=raw_paths)
def test_normalize_is_400_or_a_canonical_fixed_point(raw):
    try:
        path = normalize(raw)
    except HTTPError as exc:
        assert exc.status == 400
        return
    assert path.startswith("/")
    inner = path[1:].removesuffix("/").split("/") if path != "/" else []
    assert all(s not in ("", ".", "..") for s in inner), path
    assert not set(path) & {"\0", "\r", "\n"}
    # Decoded once, and only once: encoding the result again gives it back.
    assert normalize(quote(path, safe=PATH_SAFE).encode("ascii")) == path


@fuzz(300)
@given(raw=raw_paths, strip=st.integers(0, 6), base=st.sampled_from(["", "/v1", "/a b", "/%41"]))
def test_rewrite_replaces_exactly_the_stripped_segments(raw, strip, base):
    try:
        path = normalize(raw)
    except HTTPError:
        return
    segments = path.split("/")[1:]  # a trailing slash is a last empty segment
    named = [s for s in segments if s]
    strip = min(strip, len(named))
    sent = rewrite(raw, strip, base)
    assert sent[:1] == b"/"
    rest = segments[strip:]
    # The base path may come encoded from the config; the rest is decoded text.
    expected = (quote(base, safe=PATH_SAFE + "%")
                + (quote("/" + "/".join(rest), safe=PATH_SAFE) if rest else ""))
    assert normalize(sent) == normalize(expected.encode("ascii") or b"/")
    if strip == 0 and not base:
        assert sent == raw  # forwarded byte for byte (SPEC §4)


# -- routing ------------------------------------------------------------------------------

PATTERN_SEGMENTS = ["a", "b", "api", "v1", "x.js", "*", "**", "*.js", "a*", "?", "*b*", "v?"]
PATH_SEGMENTS = ["a", "b", "api", "v1", "x.js", "ab", "ba", "apix", "v2", "", "abc.js"]


def reference_match(pattern: str, path: str) -> bool:
    """SPEC §4 read literally: does ``pattern`` cover ``path`` (or a path above it)?"""
    parts = [s for s in pattern.split("/") if s]
    while parts and parts[-1] in ("*", "**"):
        parts.pop()  # "/x/*" is "/x", "/*" is everything
    return _covers(parts, [s for s in path.split("/") if s])


def _covers(parts: list[str], segments: list[str]) -> bool:
    if not parts:
        return True  # matched so far: everything below matches too
    if parts[0] == "**":
        return any(_covers(parts[1:], segments[i:]) for i in range(len(segments) + 1))
    return bool(segments) and fnmatch.fnmatchcase(segments[0], parts[0]) and \
        _covers(parts[1:], segments[1:])


def reference_rank(route: Route) -> tuple:
    """Priority, then the longest literal part, fewest wildcards, fewest "**", file order."""
    parts = [s for s in route.path.split("/") if s]
    while parts and parts[-1] in ("*", "**"):
        parts.pop()
    merged: list[str] = []
    for part in parts:
        if not (part == "**" and merged[-1:] == ["**"]):
            merged.append(part)
    text = "/" + "/".join(merged)
    literal = sum(c not in "*?" for c in text)  # slashes count (routing.py's documented choice)
    return (-route.priority, -literal, _wildcard_runs(text), merged.count("**"), route.index)


def _wildcard_runs(text: str) -> int:
    runs, previous = 0, ""
    for char in text:
        if char == "?" or (char == "*" and previous != "*"):
            runs += 1
        previous = char
    return runs


routes_st = st.lists(st.tuples(
    st.lists(st.sampled_from(PATTERN_SEGMENTS), max_size=4),
    st.sampled_from([None, frozenset({"GET"}), frozenset({"POST"}), frozenset({"GET", "PUT"})]),
    st.sampled_from([0, 0, 0, 1, -1]),
    st.booleans()), min_size=1, max_size=8)
request_paths = st.tuples(st.lists(st.sampled_from(PATH_SEGMENTS), max_size=5), st.booleans())


def build_routes(spec: list) -> list[Route]:
    # a trailing slash after no segment at all would be "//", which is no pattern
    return [Route(path="/" + "/".join(segments) + ("/" if slash and segments else ""), index=i,
                  methods=methods, priority=priority)
            for i, (segments, methods, priority, slash) in enumerate(spec)]


@fuzz(400)
@given(spec=routes_st, target=request_paths,
       method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]))
def test_route_match_agrees_with_the_spec(spec, target, method):
    routes = build_routes(spec)
    table = RouteTable(routes)
    segments, slash = target
    path = "/" + "/".join(s for s in segments if s) + ("/" if slash and any(segments) else "")
    found = table.match(method, path)

    def accepts(route: Route) -> bool:
        methods = route.methods
        if methods is not None and "GET" in methods:
            methods = methods | {"HEAD"}
        return methods is None or method in methods

    candidates = [r for r in routes if reference_match(r.path, path) and accepts(r)]
    if not candidates:
        assert found is None
        return
    assert found is not None and found.route in routes
    best = min(candidates, key=reference_rank)
    assert found.route is best, (path, method, [r.path for r in candidates])


@fuzz(300)
@given(prefixes=st.lists(st.lists(st.sampled_from(["a", "b", "api", "v1"]), min_size=1,
                                  max_size=4), min_size=1, max_size=6),
       target=st.lists(st.sampled_from(["a", "b", "api", "v1", "ab"]), max_size=5))
def test_the_longest_literal_prefix_wins(prefixes, target):
    routes = [Route(path="/" + "/".join(p), index=i) for i, p in enumerate(prefixes)]
    path = "/" + "/".join(target)
    found = RouteTable(routes).match("GET", path)
    covering = [r for r in routes if target[:len(r.path.split("/")) - 1] == r.path.split("/")[1:]]
    if not covering:
        assert found is None
        return
    longest = max(len(r.path) for r in covering)
    assert found is not None and len(found.route.path) == longest
    assert found.route is min((r for r in covering if len(r.path) == longest),
                              key=lambda r: r.index)  # equals: file order


# -- static path resolution ----------------------------------------------------------------

STATIC_SEGMENTS = [b"a.txt", b"dir", b"index.html", b"out", b"in", b"secret", b".hidden",
                   b".well-known", b"x", b"..", b".", b"", b"%2e%2e", b"%2e", b"%2f", b"%5c",
                   b"%252e%252e", b"%c0%ae%c0%ae", b"%00", b"C:", b"root-evil", b"root"]
static_paths = st.one_of(
    st.lists(st.sampled_from(STATIC_SEGMENTS), max_size=6).map(lambda s: b"/" + b"/".join(s)),
    st.binary(max_size=30).map(lambda b: b"/" + b))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/ with files, a directory, dotfiles and symlinks in and out; secrets beside it."""
    base = tmp_path_factory.mktemp("static").resolve()
    root, evil = base / "root", base / "root-evil"
    for d in (root / "dir", root / ".well-known", evil):
        d.mkdir(parents=True)
    for f in ("a.txt", "dir/index.html", ".hidden", ".well-known/x"):
        (root / f).write_text("inside\n")
    (base / "secret").write_text("outside\n")
    (evil / "secret").write_text("outside\n")
    (root / "out").symlink_to(base)  # leads outside the root
    (root / "in").symlink_to(root / "dir")
    (root / "dir" / "up").symlink_to(evil)
    return str(root)


def check_decision(root: str, decision) -> None:
    if isinstance(decision, File):
        assert inside(root, decision.node.real)
        assert inside(root, os.path.realpath(decision.fs_path))
        assert Path(decision.fs_path).read_text() == "inside\n"
    elif isinstance(decision, Listing):
        assert inside(root, decision.node.real)
    elif isinstance(decision, Redirect):
        assert decision.location.startswith("/") and not decision.location.startswith("//")
    else:
        assert decision is None or isinstance(decision, Refuse)


@fuzz(400)
@given(raw=static_paths, listing=st.booleans(), dotfiles=st.booleans())
def test_static_resolution_never_leaves_the_root(tree, raw, listing, dotfiles):
    opts = StaticOptions(listing=listing, dotfiles=dotfiles)
    fs = FileSystem(tree, follow_symlinks=False)
    # As the static site does: the raw path checked on its own, then the normalised one.
    try:
        path = normalize(raw)
    except HTTPError:
        path = None
    if path is not None and raw_path_problem(raw) is None and path_problem(path) is None:
        check_decision(tree, resolve(tree, path, opts, fs.lookup))
    # And resolve alone, handed any text at all: its own checks must suffice.
    text = raw.decode("utf-8", "surrogateescape")
    check_decision(tree, resolve(tree, text, opts, fs.lookup))
    if "\0" not in text:  # the schema refuses a NUL in a configured fallback name
        check_decision(tree, fallback_file(tree, text.lstrip("/"), opts, fs.lookup))


# -- one real worker, raw bytes over TCP ---------------------------------------------------


@pytest.fixture(scope="module")
def worker(rex_module, upstream_module):
    strict = StrictUpstream()
    up = upstream_module.raw(strict)
    port = rex_module.serve({"/": up.url}, """\
        limits: {header_bytes: 4k, body_bytes: 64k}
        timeouts: {header: 2, read: 2, idle: 2}
        logging: {access: off}
        workers: 1
    """)
    return port, strict, rex_module


def exchange(port: int, data: bytes) -> tuple[list, bytes]:
    """Send ``data``, half-close, read every reply until Rex closes: (final replies, bytes).

    A reply to HEAD has no body whatever its fields say, so which replies answer
    HEAD is read off the requests as Rex's own reader (pure, above) sees them.
    Raises ``Violation`` for bytes that are not strict HTTP/1.1, AssertionError
    for a hang.
    """
    methods = [event[1][0] for event in parse([data])[0] if event[0] == "head"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # Rex refused and closed while we were sending: read what it said
        raw, closed = read_until_close(s, 6)
    if not closed:
        raise AssertionError(f"no close within 6s; got {raw[:300]!r}")
    replies, pos = [], 0
    while pos < len(raw):
        head = len(replies) < len(methods) and methods[len(replies)] == "HEAD"
        msg, used = take(raw[pos:], request=False, head_request=head, eof=True)
        pos += used
        if msg.status >= 200:
            replies.append(msg)
    return replies, raw


@fuzz(60)
@given(data=raw_requests)
def test_a_worker_answers_any_bytes_strictly_or_closes(worker, data):
    port, strict, rex = worker
    before = len(strict.requests)
    try:
        replies, raw = exchange(port, data)
    except Violation as exc:
        raise AssertionError(f"Rex answered with bytes that are not strict HTTP/1.1: {exc}")
    assert raw == b"" or raw.startswith(b"HTTP/1.1 ")
    assert strict.violations == [], "the upstream received something ambiguous"
    seen = strict.requests[before:]
    assert len(seen) <= len(replies), "the upstream saw more requests than the client got answers"
    # A request hidden in a body would reach the upstream without an answer of its
    # own: the count above catches it (a pipelined "GET /smuggled" is a real request).
    for msg in seen:
        assert not (msg.values(b"content-length") and msg.values(b"transfer-encoding"))
    assert len(rex.workers()) == 1
