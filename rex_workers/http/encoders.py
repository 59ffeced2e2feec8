"""Streaming content encoders: a body transform per coding (gzip, br), flushed at every piece.

Each encoder is a ``message.BodyTransform``: ``feed`` takes the next piece of a
body and returns everything that piece compresses to, flushed (a sync flush in
deflate's terms), so that a Server-Sent Event or a long poll's answer reaches
the client as soon as the responder hands it over; ``finish`` ends the stream.
Memory per response is bounded whatever the body's size: one compressor's
window and state (deflate's 256 KiB at most, Brotli's window capped at 512 KiB
as nginx's brotli module does), never the body.

No I/O. Brotli is optional: without the ``brotli`` package, ``br`` is simply
not in ``ENCODERS`` (the config refuses to name it, ``config.validator``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from .message import BodyTransform

try:
    import brotli
except ImportError:  # the optional extra is not installed: br is not offered
    brotli = None

# The coding names as they go into Content-Encoding.
NAMES = {"gzip": b"gzip", "br": b"br"}
_SYNC = zlib.Z_SYNC_FLUSH
_BROTLI_WINDOW = 19  # 2**19 = 512 KiB (nginx brotli_window's default)


def _window_bits(length: int | None, smallest: int, largest: int) -> int:
    """A window just large enough for a body of known ``length`` (nginx sizes gzip's so):
    a small response does not pay for allocating and clearing the largest window."""
    if length is None:
        return largest
    return max(smallest, min(largest, (length - 1).bit_length()))


class Gzip:
    """gzip (RFC 1952) over deflate, from the standard library's zlib."""

    __slots__ = ("_z",)

    def __init__(self, level: int, length: int | None) -> None:
        bits = _window_bits(length, 9, 15)
        # 16 + bits: the gzip wrapper; the hash table shrinks with the window.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 16 + bits, max(1, min(8, bits - 7)))

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""  # a flush with nothing new would still emit an empty block
        z = self._z
        return z.compress(data) + z.flush(_SYNC)

    def finish(self) -> bytes:
        return self._z.flush()


class Brotli:
    """br (RFC 7932), from the ``brotli`` package."""

    __slots__ = ("_c",)

    def __init__(self, level: int, length: int | None) -> None:
        self._c = brotli.Compressor(quality=level,
                                    lgwin=_window_bits(length, 10, _BROTLI_WINDOW))

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        c = self._c
        return c.process(data) + c.flush()

    def finish(self) -> bytes:
        return self._c.finish()


# coding -> encoder class (level, body length or None) -> transform
ENCODERS: dict[str, Callable[[int, int | None], BodyTransform]] = {"gzip": Gzip}
if brotli is not None:
    ENCODERS["br"] = Brotli
