"""A small time-limited, size-bounded map for resolved paths and file contents.

Pure data structure: no files, no sockets, the clock is injected. Entries are
fresh for ``ttl`` seconds; a stale entry is still handed back (marked stale)
so the caller can revalidate it cheaply (one stat) and keep what did not
change, such as a small file's bytes. Least recently used entries go first
when either bound (entry count, total ``size``) is exceeded. ``on_drop`` hears
of every value that leaves (evicted, replaced or discarded), so an index kept
beside the cache (the static site's ready responses) never outlives its entry.

Not thread-safe, and need not be: a worker's greenlets share one thread and
nothing here yields.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class TTLCache:
    def __init__(self, ttl: float, max_entries: int, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic,
                 on_drop: Callable[[Any], None] | None = None) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.on_drop = on_drop
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[float, Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> tuple[Any, bool] | None:
        """``(value, fresh)`` for ``key``, or None when it is not cached."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        expires, value, _ = entry
        return value, self.clock() < expires

    def expires(self, key: Hashable) -> float | None:
        """When ``key``'s entry goes stale (the clock's time), or None when it is not cached."""
        entry = self._entries.get(key)
        return entry[0] if entry is not None else None

    def put(self, key: Hashable, value: Any, size: int = 0) -> None:
        """Cache ``value`` for ``ttl`` seconds; ``size`` counts against ``max_bytes``."""
        self.discard(key)
        if size > self.max_bytes:
            return  # would evict everything else and still not fit
        self._entries[key] = (self.clock() + self.ttl, value, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped, dropped_size) = self._entries.popitem(last=False)
            self.bytes -= dropped_size
            if self.on_drop is not None:
                self.on_drop(dropped)

    def discard(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]
            if self.on_drop is not None:
                self.on_drop(entry[1])
