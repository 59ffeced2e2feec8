"""What an app passed to ``start_response``, checked, and the fields Rex sends for it.

Pure policy: validate the status and header list (PEP 3333 "The
start_response() Callable"), drop hop-by-hop fields the app must not set, and
add ``Date`` and ``Server`` when the app did not. No sockets, no gevent; the
serving code in ``host.py`` decides *when* to respond, and the connection how
the body is framed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..http.message import Header
from ..http.pages import SERVER, reason

# RFC 9110 §7.6.1: these describe one connection, and that connection is
# Rex's to manage; PEP 3333 forbids apps to send them. Transfer-Encoding is
# chosen by the connection from the framing.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"transfer-encoding", b"upgrade", b"trailer"})

_STATUS = re.compile(r"([1-9]\d\d)(?: ([^\r\n\0]*))?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")


class WSGIResponseError(ValueError):
    """The app broke the ``start_response`` contract (a bug in the app: 500)."""


@dataclass(slots=True)
class Head:
    status: int
    reason: bytes  # b"OK": the app's own phrase is kept
    headers: list[Header]  # what goes out, minus framing and Connection
    content_length: int | None = None
    close: bool = False  # the app said "Connection: close": honoured, then dropped
    dated: bool = False  # the app sent Date
    served: bool = False  # the app sent Server


# What the strict check below has accepted once, so the next response with the
# same status or field names skips the work: status line -> (code, reason), field
# name -> (its bytes, what it is). An app has a handful of each; the tables stop
# growing at _LEARN_MAX all the same.
_STATUSES: dict[str, tuple[int, bytes]] = {}
_NAMES: dict[str, tuple[bytes, int]] = {}
_LEARN_MAX = 512
_PLAIN, _LENGTH, _DATE, _SERVER = range(4)
_KINDS = {b"content-length": _LENGTH, b"date": _DATE, b"server": _SERVER}


def parse_head(status: str, headers: list[tuple[str, str]]) -> Head:
    """Check ``start_response``'s arguments; raise WSGIResponseError on any violation.

    The fast lane: a status and field names seen before, values checked in place.
    Anything it is unsure of (a new name, a hop-by-hop field, a Content-Length with
    spaces, a value to refuse) goes to the strict check, which raises or answers.
    """
    if type(status) is str and status in _STATUSES and type(headers) is list:
        code, phrase = _STATUSES[status]
        head = Head(code, phrase, [])
        out = head.headers
        names = _NAMES
        try:
            for item in headers:
                if type(item) is not tuple:
                    break
                name, value = item
                if (type(name) is not str or name not in names or type(value) is not str
                        or "\r" in value or "\n" in value or "\0" in value):
                    break
                raw_name, kind = names[name]
                raw = value.encode("latin-1")
                if kind == _LENGTH:
                    if not raw.isdigit() or len(raw) > 18:
                        break
                    length = int(raw)
                    if head.content_length is not None and head.content_length != length:
                        break
                    head.content_length = length
                    continue
                if kind == _DATE:
                    head.dated = True
                elif kind == _SERVER:
                    head.served = True
                out.append((raw_name, raw))
            else:
                return head
        except (ValueError, TypeError):  # not a pair, not hashable, not latin-1
            pass
    return _checked_head(status, headers)


def _checked_head(status: str, headers: list[tuple[str, str]]) -> Head:
    """The strict check, one field at a time, learning what the fast lane may reuse."""
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
    phrase = match.group(2) if match.group(2) is not None else reason(code)
    head = Head(code, _latin1(phrase, "status"), [])
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise WSGIResponseError(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise WSGIResponseError(f"invalid header name {name!r}")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise WSGIResponseError(f"invalid value for header {name}: {value!r}")
        lname = name.lower().encode("ascii")
        _add(head, lname, name.encode("ascii"), _latin1(value, f"header {name}"))
        if (lname not in HOP_BY_HOP and lname != b"x-request-id" and name not in _NAMES
                and len(_NAMES) < _LEARN_MAX):
            _NAMES[name] = (name.encode("ascii"), _KINDS.get(lname, _PLAIN))
    if len(_STATUSES) < _LEARN_MAX:
        _STATUSES[status] = (code, head.reason)
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
    if lname == b"x-request-id":
        return  # the connection returns the request's id itself (it is in the environ)
    if lname == b"date":
        head.dated = True
    elif lname == b"server":
        head.served = True
    head.headers.append((name, value))


def _latin1(text: str, what: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        # PEP 3333: header values are native strings holding latin-1 bytes;
        # anything else must be encoded by the app (e.g. RFC 8187 for filenames).
        raise WSGIResponseError(f"{what} has characters outside latin-1: {text!r}") from None


def fields(head: Head, date: bytes) -> list[Header]:
    """The app's fields, then ``Date`` and ``Server`` where it gave none (RFC 9110 §6.6.1)."""
    if not (head.dated or head.served):
        return [*head.headers, (b"Date", date), (b"Server", SERVER)]
    out = list(head.headers)
    if not head.dated:
        out.append((b"Date", date))
    if not head.served:
        out.append((b"Server", SERVER))
    return out
