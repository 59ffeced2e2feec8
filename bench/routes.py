"""Cost of route matching against table size: Rex's RouteTable with 10 vs 1,000 routes.

SPEC §4 asks that matching not grow linearly with the number of routes. Both
tables hold the same mix of pattern shapes (literal prefixes, ``*`` within a
segment, ``**``, a ``/*`` catch-all) and each is probed with paths of the
same shapes that hit its own routes, so the work per lookup is alike and
only the table's size differs. In-process and CPU-bound: no sockets.
"""

from __future__ import annotations

import importlib
import random
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PATHS_PER_TABLE = 500
REPEAT = 5
SEED = 6  # fixed, so every run probes the same paths

# (route pattern, a request path it matches) for route number i.
SHAPES: tuple[tuple[str, str], ...] = (
    ("/svc{i}", "/svc{i}/items/42"),
    ("/svc{i}/api/v1", "/svc{i}/api/v1/users/7"),
    ("/svc{i}/assets/*.js", "/svc{i}/assets/app.js"),
    ("/svc{i}/users/*/avatar", "/svc{i}/users/alice/avatar"),
    ("/svc{i}/**/x", "/svc{i}/a/b/x"),
)
MISS = "/unrouted/{i}/page"  # answered by the catch-all


@dataclass(frozen=True, slots=True)
class RoutesResult:
    ns_per_match: dict[int, float]  # route count -> nanoseconds per match
    ratio: float  # largest table's cost / smallest table's


def patterns(count: int) -> list[str]:
    """``count`` route patterns: the shapes in turn, the last one ``/*``."""
    out = [SHAPES[i % len(SHAPES)][0].format(i=i) for i in range(count - 1)]
    return [*out, "/*"]


def probe_paths(count: int, how_many: int = PATHS_PER_TABLE, seed: int = SEED) -> list[str]:
    """Request paths hitting routes of a ``count``-route table, one in ten a miss."""
    rng = random.Random(seed)
    paths = []
    for n in range(how_many):
        i = rng.randrange(count - 1)
        template = MISS if n % 10 == 9 else SHAPES[i % len(SHAPES)][1]
        paths.append(template.format(i=i))
    return paths


def _build(count: int) -> Callable[[str, str], object]:
    """A compiled table's ``match``; imported late so a missing module is one clear error."""
    model = importlib.import_module("rex_workers.config.model")
    routing = importlib.import_module("rex_workers.config.routing")
    upstream = model.Upstream(url="http://127.0.0.1:9", scheme="http", host="127.0.0.1", port=9)
    routes = [model.Route(path=p, index=i, upstreams=(upstream,))
              for i, p in enumerate(patterns(count))]
    return routing.RouteTable(routes).match


def ns_per_match(match: Callable[[str, str], object], paths: Sequence[str]) -> float:
    """Best-of-``REPEAT`` time of one ``match`` call, in nanoseconds."""

    def run() -> None:
        for path in paths:
            match("GET", path)

    timer = timeit.Timer(run)
    number, _ = timer.autorange()  # enough loops for about 0.2 s
    best = min(timer.repeat(REPEAT, number))
    return best / (number * len(paths)) * 1e9


def measure(counts: Sequence[int]) -> RoutesResult:
    """Time matching for each table size; every probe must find a route."""
    costs = {}
    for count in counts:
        match = _build(count)
        paths = probe_paths(count)
        misses = [p for p in paths if match("GET", p) is None]
        if misses:
            raise ValueError(f"{len(misses)} probe paths matched no route, e.g. {misses[0]}")
        costs[count] = ns_per_match(match, paths)
    return RoutesResult(costs, costs[max(counts)] / costs[min(counts)])
