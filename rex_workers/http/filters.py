"""The filter stage: responses on their way from a responder to the connection.

A filter (``message.Filter``) sees each response head once: it may change the
status, headers or length in place and returns a body transform, or None when
the body passes untouched. The connection calls ``start`` with the filters the
dispatcher chose for the request; with none (the common case) it never calls
here at all, so unfiltered responses keep their zero-copy paths. A body that a
transform must see is turned into bytes first (``as_bytes``): file regions are
read, socket spans received.

Protocol-neutral: HTTP/1.1 and HTTP/2 connections use the same chain. No sockets
of its own: the only I/O is reading the parts of a body that is being transformed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

from .message import BodyTransform, FileRegion, Filter, Part, Response, SocketSpan
from .request import Abort, Request
from .wire import BLOCK_SIZE


class Chain:
    """The body transforms one response goes through, in filter order."""

    __slots__ = ("transforms",)

    def __init__(self, transforms: list[BodyTransform]) -> None:
        self.transforms = transforms

    def feed(self, data: bytes) -> bytes:
        for transform in self.transforms:
            data = transform.feed(data)
        return data

    def finish(self) -> bytes:
        """What the transforms still hold at the end of the body, through every later one."""
        data = b""
        for transform in self.transforms:
            data = (transform.feed(data) if data else b"") + transform.finish()
        return data


def start(filters: Sequence[Filter], request: Request, response: Response) -> Chain | None:
    """Run each filter on ``response``'s head; the chain its body must pass, if any."""
    transforms = [t for f in filters if (t := f(request, response)) is not None]
    return Chain(transforms) if transforms else None


def as_bytes(body: bytes | memoryview | FileRegion | Iterable[Part]) -> Iterator[bytes]:
    """A body as plain byte pieces, whatever kind of source it is."""
    kind = type(body)
    if kind is bytes or kind is memoryview or kind is FileRegion:
        body = (body,)
    for part in body:
        kind = type(part)
        if kind is bytes:
            yield part
        elif kind is memoryview:
            yield bytes(part)
        elif kind is FileRegion:
            yield from _read_file(part)
        else:
            yield from _read_span(part)


def _read_file(region: FileRegion) -> Iterator[bytes]:
    offset, left = region.offset, region.count
    while left:
        data = os.pread(region.fd, min(left, BLOCK_SIZE), offset)
        if not data:
            raise Abort()  # the file shrank under us: the promised bytes do not exist
        offset += len(data)
        left -= len(data)
        yield data


def _read_span(span: SocketSpan) -> Iterator[bytes]:
    left = span.count
    span.sock.settimeout(span.timeout)
    while left:
        try:
            data = span.sock.recv(min(left, BLOCK_SIZE))
        except OSError:  # TimeoutError included: the upstream stalled or failed
            raise Abort() from None
        if not data:
            raise Abort()  # the upstream closed in the middle of the body
        left -= len(data)
        yield data
