"""rex_workers.config.routing: the compiled route table and virtual hosts (SPEC §4)."""

from __future__ import annotations

import pytest

from rex_workers.config.model import Config, Instance, Route
from rex_workers.config.routing import Match, RouteTable, VirtualHosts, listeners, pattern_error


def table(*patterns: str | Route) -> RouteTable:
    """Routes from bare patterns (index = position) or ready-made Route objects."""
    return RouteTable(
        [p if isinstance(p, Route) else Route(path=p, index=i) for i, p in enumerate(patterns)]
    )


def winner(routes: RouteTable, path: str, method: str = "GET") -> str | None:
    found = routes.match(method, path)
    return None if found is None else found.route.path


MATCHES = [
    # patterns (in file order), request path, winning pattern (None: no route)
    # A literal matches itself and everything below it on a segment boundary.
    (["/api"], "/api", "/api"),
    (["/api"], "/api/", "/api"),
    (["/api"], "/api/v1/x", "/api"),
    (["/api"], "/apix", None),
    (["/api"], "/ap", None),
    (["/api"], "/", None),
    (["/api/"], "/api", "/api/"),
    (["/api/v1"], "/api/v1/users", "/api/v1"),
    (["/api/v1"], "/api/v2", None),
    (["/api"], "/API", None),  # case-sensitive
    # "/x/*" is "/x"; "/*" and "/" match everything.
    (["/x/*"], "/x", "/x/*"),
    (["/x/*"], "/x/y/z", "/x/*"),
    (["/x/*"], "/xy", None),
    (["/*"], "/", "/*"),
    (["/*"], "/anything/at/all", "/*"),
    (["/"], "/anything", "/"),
    (["/**"], "/a/b", "/**"),
    # "*" and "?" inside a segment stay within that segment.
    (["/assets/*.js"], "/assets/app.js", "/assets/*.js"),
    (["/assets/*.js"], "/assets/.js", "/assets/*.js"),
    (["/assets/*.js"], "/assets/app.css", None),
    (["/assets/*.js"], "/assets/app.js/map", "/assets/*.js"),
    (["/assets/*.js"], "/assets/a/b.js", None),
    (["/users/*/avatar"], "/users/42/avatar", "/users/*/avatar"),
    (["/users/*/avatar"], "/users/42/avatar/big", "/users/*/avatar"),
    (["/users/*/avatar"], "/users/42", None),
    (["/users/*/avatar"], "/users/4/2/avatar", None),
    (["/v?/x"], "/v1/x", "/v?/x"),
    (["/v?/x"], "/v10/x", None),
    (["/v?/x"], "/v/x", None),
    (["/a*b*c"], "/aXbYc", "/a*b*c"),
    (["/a*b*c"], "/abc", "/a*b*c"),
    (["/a*b*c"], "/acb", None),
    (["/a.b"], "/aXb", None),  # regex characters in a pattern are literal
    (["/f(1)+"], "/f(1)+", "/f(1)+"),
    # "**" is zero or more whole segments.
    (["/a/**/z"], "/a/z", "/a/**/z"),
    (["/a/**/z"], "/a/b/c/z", "/a/**/z"),
    (["/a/**/z"], "/a/b/c/z/more", "/a/**/z"),
    (["/a/**/z"], "/a/b/c", None),
    (["/a/**/z"], "/a/bz", None),
    (["/**/*.map"], "/x.map", "/**/*.map"),
    (["/**/*.map"], "/deep/down/x.map", "/**/*.map"),
    (["/**/*.map"], "/deep/down/x.js", None),
    (["/a/**/**/z"], "/a/q/z", "/a/**/**/z"),
    # The original's compat configs (shared/compat).
    (["/path1", "/path2", "/*"], "/path1", "/path1"),
    (["/path1", "/path2", "/*"], "/path1/sub?", "/path1"),
    (["/path1", "/path2", "/*"], "/path2/", "/path2"),
    (["/path1", "/path2", "/*"], "/path10", "/*"),
    (["/path1", "/path2", "/*"], "/", "/*"),
    (["/path1", "/path2", "/*"], "/other/page", "/*"),
    (["/api", "/*"], "/api/users", "/api"),
    (["/api", "/*"], "/apis", "/*"),
    (["/api", "/*"], "/@vite/client", "/*"),
    # The most specific wins whatever the file order: longest literal part...
    (["/*", "/api"], "/api/x", "/api"),
    (["/api", "/api/v1"], "/api/v1/x", "/api/v1"),
    (["/api/v1", "/api"], "/api/v2/x", "/api"),
    (["/assets", "/assets/*.js"], "/assets/a.js", "/assets/*.js"),
    (["/users/*/avatar", "/users/me"], "/users/me/avatar", "/users/*/avatar"),
    (["/users/*/avatar", "/users/me"], "/users/me", "/users/me"),
    (["/a*/x*", "/a*/xy"], "/ab/xy", "/a*/xy"),
    # ...then fewest wildcards...
    (["/a?/*b", "/*/ab"], "/ax/ab", "/*/ab"),
    (["/*x*", "/?x"], "/ax", "/?x"),
    (["/a/**/b", "/a/*/b"], "/a/q/b", "/a/*/b"),
    # ...then file order.
    (["/*", "/"], "/x", "/*"),
    (["/", "/*"], "/x", "/"),
    (["/a?", "/?b"], "/ab", "/a?"),
    (["/?b", "/a?"], "/ab", "/?b"),
    (["/api", "/api/"], "/api/x", "/api"),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), MATCHES)
def test_match(patterns: list[str], path: str, expected: str | None) -> None:
    assert winner(table(*patterns), path) == expected


PRIORITIES = [
    # routes, path, winning pattern: explicit priority beats specificity and order
    ([Route("/api/v1", 0), Route("/*", 1, priority=10)], "/api/v1/x", "/*"),
    ([Route("/api/v1", 0, priority=-1), Route("/api", 1)], "/api/v1", "/api"),
    ([Route("/a", 0, priority=1), Route("/a", 1, priority=2)], "/a", "/a"),
    ([Route("/**/x", 0), Route("/a", 1, priority=1)], "/a/x", "/a"),
]


@pytest.mark.parametrize(("routes", "path", "expected"), PRIORITIES)
def test_priority(routes: list[Route], path: str, expected: str) -> None:
    assert winner(RouteTable(routes), path) == expected


def test_same_pattern_priority_then_file_order() -> None:
    first, second, third = Route("/a", 0), Route("/a", 1, priority=5), Route("/a", 2, priority=5)
    assert RouteTable([first, second, third]).match("GET", "/a") == Match(second, 1)
    assert RouteTable([third, first, second]).match("GET", "/a/b") == Match(second, 1)


STRIPS = [
    # pattern, path, strip_segments: the leading literal segments of the pattern
    ("/", "/x", 0),
    ("/*", "/x", 0),
    ("/api", "/api/v1", 1),
    ("/api/", "/api/v1", 1),
    ("/api/v1/*", "/api/v1/x", 2),
    ("/api/v1/*.js", "/api/v1/x.js", 2),
    ("/users/*/avatar", "/users/1/avatar", 1),
    ("/a/**/z", "/a/b/z", 1),
    ("/**/z", "/b/z", 0),
    ("/v?/x", "/v1/x", 0),
]


@pytest.mark.parametrize(("pattern", "path", "strip"), STRIPS)
def test_strip_segments(pattern: str, path: str, strip: int) -> None:
    found = table(pattern).match("GET", path)
    assert found is not None
    assert found.strip_segments == strip


METHODS = [
    # routes, method, path, winning index (None: no route)
    ([Route("/api", 0, methods=frozenset({"POST"}))], "POST", "/api/x", 0),
    ([Route("/api", 0, methods=frozenset({"POST"}))], "GET", "/api/x", None),
    ([Route("/api", 0, methods=frozenset({"POST"}))], "post", "/api/x", None),
    ([Route("/api", 0, methods=frozenset({"GET"}))], "HEAD", "/api", 0),
    ([Route("/api", 0, methods=frozenset({"HEAD"}))], "GET", "/api", None),
    # A route that excludes the method is skipped: the next candidate wins.
    ([Route("/api", 0, methods=frozenset({"POST"})), Route("/*", 1)], "GET", "/api", 1),
    ([Route("/api", 0, methods=frozenset({"POST"})), Route("/*", 1)], "POST", "/api", 0),
    (
        [
            Route("/api/v1", 0, methods=frozenset({"PUT"})),
            Route("/api", 1, methods=frozenset({"GET", "PUT"})),
            Route("/", 2, methods=frozenset({"DELETE"})),
        ],
        "GET",
        "/api/v1",
        1,
    ),
]


@pytest.mark.parametrize(("routes", "method", "path", "expected"), METHODS)
def test_methods(routes: list[Route], method: str, path: str, expected: int | None) -> None:
    found = RouteTable(routes).match(method, path)
    assert (None if found is None else found.route.index) == expected


def test_allowed_is_the_union_of_matching_routes_methods() -> None:
    routes = RouteTable(
        [
            Route("/api", 0, methods=frozenset({"POST"})),
            Route("/api/v1", 1, methods=frozenset({"GET", "PUT"})),
            Route("/static", 2),
        ]
    )
    assert routes.match("DELETE", "/api/v1/x") is None
    assert routes.allowed("/api/v1/x") == {"POST", "GET", "HEAD", "PUT"}
    assert routes.allowed("/api/v2") == {"POST"}
    assert routes.allowed("/other") == frozenset()
    assert routes.allowed("/static/x") == frozenset()  # every method: never a 405


DOTS = "must not contain . or .. segments (requests are matched after resolving them)"


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("/api", None),
        ("/", None),
        ("/a/**/b", None),
        ("/a/", None),
        ("api", 'must start with "/"'),
        ("", 'must start with "/"'),
        ("*", 'must start with "/"'),
        ("/a/../b", DOTS),
        ("/a/./b", DOTS),
        ("/a/..", DOTS),
        ("/a//b", "must not contain an empty segment (//)"),
        ("//", "must not contain an empty segment (//)"),
        ("//api//v1/", "must not contain an empty segment (//)"),
        ("/a/**x", "** must be a whole segment (/a/**/b)"),
        ("/a b", "must not contain spaces or control characters"),
        ("/a\x7f", "must not contain spaces or control characters"),
    ],
)
def test_pattern_error(pattern: str, error: str | None) -> None:
    assert pattern_error(pattern) == error
    if error:
        with pytest.raises(ValueError, match="route path"):
            table(pattern)


def literal_routes(count: int) -> RouteTable:
    return table(*(f"/service{i}/api" for i in range(count)), "/*")


@pytest.mark.parametrize("path", ["/service7/api/users/42", "/service9/x", "/nothing/here", "/"])
def test_match_visits_as_many_nodes_for_1000_routes_as_for_10(path: str) -> None:
    small, large = literal_routes(10), literal_routes(1000)
    assert winner(large, path) == winner(small, path)
    assert large._walk(path)[1] == small._walk(path)[1] <= 1 + path.count("/")


def test_globs_and_deep_nodes_stay_bounded() -> None:
    routes = table(*(f"/s{i}/**/x{i}" for i in range(200)), "/**/*.js")
    assert winner(routes, "/s5/a/b/c/x5") == "/s5/**/x5"
    assert winner(routes, "/s5/a/b/c/app.js") == "/**/*.js"
    # Each segment holds at most a handful of trie positions, never one per route.
    assert routes._walk("/s5/a/b/c/x5")[1] <= 4 * 6


def instance(index: int, *names: str, port: int = 80, host: str = "0.0.0.0") -> Instance:
    return Instance(
        index=index, port=port, host=host, server_names=names, routes=(Route(f"/i{index}", 0),)
    )


HOSTS = [
    # instances' server_names, Host, index of the chosen instance
    ([()], "anything.test", 0),
    ([("a.test",), ("b.test",)], "b.test", 1),
    ([("a.test",), ("b.test",)], "c.test", 0),  # no unnamed one: the first
    ([("a.test",), (), ("b.test",)], "c.test", 1),  # the first unnamed one
    ([("a.test",), (), ("b.test",)], "", 1),  # no Host at all (HTTP/1.0)
    ([("a.test",), ("b.test",)], "b.test.", 1),  # a fully qualified name
    ([("*.example.com",), ()], "www.example.com", 0),
    ([("*.example.com",), ()], "a.b.example.com", 0),
    ([("*.example.com",), ()], "example.com", 1),
    ([("*.example.com",), ()], "badexample.com", 1),
    ([("*.example.com",), ()], ".example.com", 1),
    ([("*.example.com",), ("*.api.example.com",), ()], "v1.api.example.com", 1),
    ([("*.api.example.com",), ("*.example.com",), ()], "www.example.com", 1),
    ([("*.example.com",), ("www.example.com",)], "www.example.com", 1),  # exact first
    ([("Www.Example.COM",), ()], "www.example.com", 0),
    ([("a.test", "b.test"), ("b.test",)], "b.test", 0),  # file order among equals
]


@pytest.mark.parametrize(("names", "host", "expected"), HOSTS)
def test_virtual_host_selection(names: list[tuple[str, ...]], host: str, expected: int) -> None:
    hosts = VirtualHosts([instance(i, *n) for i, n in enumerate(names)])
    chosen = hosts.select(host)
    assert chosen.index == expected
    assert winner(hosts.table(chosen), f"/i{expected}/x") == f"/i{expected}"


def test_virtual_hosts_need_an_instance() -> None:
    with pytest.raises(ValueError):
        VirtualHosts([])


def test_listeners_group_instances_by_address_in_file_order() -> None:
    config = Config(
        path="",
        digest="",
        instances=(
            instance(0, "a.test", port=8000),
            instance(1, port=8443),
            instance(2, "b.test", port=8000),
            instance(3, port=8000, host="127.0.0.1"),
        ),
    )
    groups = listeners(config)
    assert list(groups) == [("0.0.0.0", 8000), ("0.0.0.0", 8443), ("127.0.0.1", 8000)]
    shared = groups[("0.0.0.0", 8000)]
    assert [i.index for i in shared.instances] == [0, 2]
    assert shared.select("b.test").index == 2
    assert winner(shared.table(shared.select("b.test")), "/i2") == "/i2"
    assert winner(shared.table(shared.select("a.test")), "/i2") is None


def test_bad_pattern_fails_when_listeners_are_built() -> None:
    bad = Instance(index=0, port=80, routes=(Route("api", 0),))
    with pytest.raises(ValueError, match="'api'"):
        listeners(Config(path="", digest="", instances=(bad,)))
