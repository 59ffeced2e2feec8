"""What an app passed to ``start_response``, checked, and the head Rex sends for it.

Pure policy: validate the status and header list (PEP 3333 "The
start_response() Callable"), drop hop-by-hop fields the app must not set,
choose the body framing for the client, and render the head bytes. No
sockets, no gevent; the serving code in ``wsgi.py`` decides *when* to send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..http.pages import reason

# RFC 9110 §7.6.1: these describe one connection, and that connection is
# Rex's to manage; PEP 3333 forbids apps to send them. Transfer-Encoding is
# chosen by Rex from the framing below.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"transfer-encoding", b"upgrade", b"trailer"})

# How the body is delimited on the wire (RFC 9112 §6.3).
NO_BODY = "none"  # HEAD, 204, 304: nothing follows the head
LENGTH = "length"  # Content-Length
CHUNKED = "chunked"  # HTTP/1.1 clients when the length is unknown
CLOSE = "close"  # HTTP/1.0 clients when the length is unknown: end = connection close

LAST_CHUNK = b"0\r\n\r\n"

_STATUS = re.compile(r"([1-9]\d\d)(?: ([^\r\n\0]*))?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")


class WSGIResponseError(ValueError):
    """The app broke the ``start_response`` contract (a bug in the app: 500)."""


@dataclass(slots=True)
class Head:
    status: int
    status_line: bytes  # b"200 OK"
    headers: list[tuple[bytes, bytes]]  # what goes out, minus framing and Connection
    content_length: int | None = None
    close: bool = False  # the app said "Connection: close": honoured, then dropped


def parse_head(status: str, headers: list[tuple[str, str]]) -> Head:
    """Check ``start_response``'s arguments; raise WSGIResponseError on any violation."""
    if type(status) is not str:
        raise WSGIResponseError(f"status must be a str, not {type(status).__name__}")
    match = _STATUS.fullmatch(status)
    if match is None:
        raise WSGIResponseError(f"invalid status {status!r} (want e.g. '200 OK')")
    code = int(match.group(1))
    if code < 200:
        # 1xx responses are the server's business (100 Continue is sent when
        # the app first reads wsgi.input); a final response is required here.
        raise WSGIResponseError(f"status {code}: an app must send a final (2xx-5xx) status")
    if type(headers) is not list:
        raise WSGIResponseError(f"headers must be a list, not {type(headers).__name__}")
    line = status if match.group(2) is not None else f"{code} {reason(code)}"
    head = Head(code, _latin1(line, "status"), [])
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise WSGIResponseError(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise WSGIResponseError(f"invalid header name {name!r}")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise WSGIResponseError(f"invalid value for header {name}: {value!r}")
        _add(head, name.lower().encode("ascii"), name.encode("ascii"),
             _latin1(value, f"header {name}"))
    return head


def _add(head: Head, lname: bytes, name: bytes, value: bytes) -> None:
    if lname == b"content-length":
        value = value.strip()
        if not value.isdigit() or len(value) > 18:
            raise WSGIResponseError(f"invalid Content-Length {value!r}")
        length = int(value)
        if head.content_length is not None and head.content_length != length:
            raise WSGIResponseError("two different Content-Length headers")
        head.content_length = length
        return
    if lname in HOP_BY_HOP:
        if lname == b"connection" and b"close" in value.lower():
            head.close = True
        return
    head.headers.append((name, value))


def _latin1(text: str, what: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        # PEP 3333: header values are native strings holding latin-1 bytes;
        # anything else must be encoded by the app (e.g. RFC 8187 for filenames).
        raise WSGIResponseError(f"{what} has characters outside latin-1: {text!r}") from None


def has_body(method: str, status: int) -> bool:
    """RFC 9110 §9.3.2, §15.3.5, §15.4.5: HEAD, 204 and 304 responses have no content."""
    return method != "HEAD" and status not in (204, 304)


def framing(head: Head, method: str, version: str, keep_alive: bool) -> tuple[str, bool]:
    """(how the body is delimited, whether the connection stays open after it)."""
    keep_alive = keep_alive and not head.close
    if not has_body(method, head.status):
        return NO_BODY, keep_alive
    if head.content_length is not None:
        return LENGTH, keep_alive
    if version == "1.1":
        return CHUNKED, keep_alive
    return CLOSE, False  # RFC 9112 §6.3 rule 8: a 1.0 client reads until the close


def render(head: Head, mode: str, keep_alive: bool, version: str, date: bytes) -> bytes:
    """The response head bytes, ending with the blank line."""
    out = [b"HTTP/1.1 ", head.status_line, b"\r\n"]
    seen = set()
    for name, value in head.headers:
        seen.add(name.lower())
        out += (name, b": ", value, b"\r\n")
    if b"date" not in seen:
        out += (b"Date: ", date, b"\r\n")
    if b"server" not in seen:
        out.append(b"Server: rex\r\n")
    # RFC 9110 §8.6: never a Content-Length on a 204; on HEAD and 304 the
    # app's value describes the GET response and is passed on.
    if head.content_length is not None and head.status != 204:
        out.append(b"Content-Length: %d\r\n" % head.content_length)
    if mode == CHUNKED:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    elif version == "1.0":
        out.append(b"Connection: keep-alive\r\n")  # 1.0 clients close unless told
    out.append(b"\r\n")
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); ``data`` must not be empty."""
    return b"%x\r\n%s\r\n" % (len(data), data)
