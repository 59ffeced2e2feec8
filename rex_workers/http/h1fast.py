"""The fast lane: a plainly valid GET or HEAD head, judged whole by compiled expressions.

Most requests a proxy sees are a GET with a short, clean head. llhttp reads
them field by field with a Python callback each; here one ``fullmatch`` checks
the whole head against a grammar narrower than RFC 9112's, one ``findall``
cuts it into fields and one more picks out the few fields whose meaning the
strict path checks (Host, framing, Connection, singletons). What this lane
is unsure of it does not judge: it answers None and the bytes go to llhttp
unchanged (``h1read.RequestReader``), so it can only ever accept what the
strict path accepts, with the same meaning. ``tests/test_h1fast.py`` holds
that with a differential fuzz.

Narrower than the strict path, each on purpose: HTTP/1.1 only; GET and HEAD
only, without Content-Length, Transfer-Encoding, Expect or Upgrade (a body or
an upgrade takes llhttp); an origin-form target of printable ASCII; field
values without leading-only or trailing whitespace (llhttp keeps trailing
whitespace in a value; here such a head goes slow rather than be read with
another meaning); Connection only as one ``keep-alive`` or ``close``; no
singleton field twice; a head well inside every size limit.

Pure code over bytes: no sockets, no parser state.
"""

from __future__ import annotations

import re

from .authority import VALID_HOSTS, valid_host
from .fieldnames import LOWER
from .framing import SINGLETONS, Response
from .request import Request

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# A field value: visible bytes (obs-text included) with spaces and tabs only inside.
_VALUE = rb"(?:[!-~\x80-\xff](?:[ \t!-~\x80-\xff]*[!-~\x80-\xff])?)?"
# The head without its final empty line; the target is printable ASCII but "#".
_HEAD = re.compile(rb"(GET|HEAD) (/[!\"$-~]*) HTTP/1\.1\r\n((?:[%s]+:[ \t]*%s\r\n)+)"
                   % (_TCHAR, _VALUE))
_FIELD = re.compile(rb"([%s]+):[ \t]*(%s)\r\n" % (_TCHAR, _VALUE))
# Field lines whose meaning the strict path checks: found, not judged, here.
_SPECIAL = re.compile(
    rb"(?:^|\n)(host|connection|content-length|transfer-encoding|expect|upgrade|if-match|"
    rb"if-none-match|%s):[ \t]*([^\r]*)" % b"|".join(sorted(SINGLETONS)), re.IGNORECASE)
# Preconditions and ranges (RFC 9110 §13.1, §14.2): a head without any is unconditional.
_CONDITIONAL = frozenset({b"if-match", b"if-none-match", b"if-modified-since",
                          b"if-unmodified-since", b"if-range", b"range"})
_SLOW = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
# An upstream's status line and fields; 1xx are left to llhttp (interim responses).
_RESPONSE = re.compile(rb"HTTP/1\.([01]) ([2-5][0-9][0-9]) ([\t -~\x80-\xff]*)\r\n"
                       rb"((?:[%s]+:[ \t]*%s\r\n)*)" % (_TCHAR, _VALUE))
_FRAMING = re.compile(rb"(?:^|\n)(content-length|transfer-encoding|connection):[ \t]*([^\r]*)",
                      re.IGNORECASE)
_KEEP = {b"keep-alive": True, b"close": False}


def bounds(header_bytes: int, line_bytes: int, fields: int, field_bytes: int) -> tuple[int, int]:
    """(bytes, lines) a head may have to take the lane: well inside every size limit.

    Under half of ``header_bytes`` (a field line's counted size exceeds its bytes by
    at most one), under the line and field limits, fewer lines than ``fields``.
    """
    return min(header_bytes // 2, line_bytes, field_bytes), fields


def take(data: bytes, limits: tuple[int, int], client_addr: tuple[str, int],
         server_port: int, scheme: str) -> tuple[Request | None, int]:
    """(the Request of the head at the front of ``data``, where its bytes end), or
    (None, 0) when the head is not complete, not small, or not plainly valid."""
    end = data.find(b"\r\n\r\n")
    max_bytes, max_lines = limits
    if not 0 < end < max_bytes or data.count(b"\n", 0, end) >= max_lines:
        return None, 0
    req = fast_request(data[:end + 2], client_addr, server_port, scheme)
    return (req, end + 4) if req is not None else (None, 0)


def fast_request(head: bytes, client_addr: tuple[str, int], server_port: int,
                 scheme: str) -> Request | None:
    """The Request of ``head`` (up to, not including, its final CRLF), or None: ask llhttp."""
    match = _HEAD.fullmatch(head)
    if match is None:
        return None
    method, target, block = match.groups()
    host = None
    keep_alive = True
    conditional = False
    seen: tuple[bytes, ...] = ()  # a tuple: adding to it is no call
    for name, value in _SPECIAL.findall(block):
        lname = LOWER[name] if name in LOWER else name.lower()  # no call when common
        if lname in seen or lname in _SLOW:
            return None  # a second Host or singleton, a body, an upgrade: llhttp's
        seen += (lname,)
        if lname == b"host":
            host = value
        elif lname in _CONDITIONAL:
            conditional = True
        elif lname == b"connection":
            keep_alive = _KEEP.get(value.lower())
            if keep_alive is None:
                return None
    if not host:
        return None  # missing or empty: the strict path says which 400
    name = VALID_HOSTS[host] if host in VALID_HOSTS else valid_host(host)
    if name is None:
        return None  # invalid: the strict path says why
    raw_path, _, query = target.partition(b"?")
    return Request(method.decode(), target, "", query, "1.1", _FIELD.findall(block),
                   name, keep_alive, None, False, False, client_addr,
                   server_port, scheme, raw_path, conditional)


def fast_response(head: bytes) -> Response | None:
    """The Response of an upstream's ``head`` (up to its final CRLF) framed by one plain
    Content-Length, or None: ask llhttp (chunked, close-delimited, 204/304, anything odd)."""
    match = _RESPONSE.fullmatch(head)
    if match is None:
        return None
    minor, status, reason, block = match.groups()
    if status in (b"204", b"304"):
        return None
    length = None
    connection = None
    for name, value in _FRAMING.findall(block):
        lname = LOWER[name] if name in LOWER else name.lower()  # no call when common
        # ``not value[18:]``: at most 18 digits, without a call to len().
        if lname == b"content-length" and length is None and value.isdigit() \
                and not value[18:]:
            length = int(value)
        elif lname == b"connection" and connection is None:
            connection = _CONNECTION_VALUES[value] if value in _CONNECTION_VALUES \
                else value.lower()
        else:
            return None  # Transfer-Encoding, a framing field twice, a length not plain digits
    if length is None or connection not in _CONNECTIONS:
        return None
    # RFC 9112 §9.3: HTTP/1.1 stays open unless "close"; HTTP/1.0 only on "keep-alive".
    keep_alive = connection != b"close" if minor == b"1" else connection == b"keep-alive"
    return Response(int(status), _VERSIONS[minor], _FIELD.findall(block), length, False,
                    keep_alive, False, reason)


_CONNECTIONS = frozenset({None, b"keep-alive", b"close"})
# Their usual spellings, lower-cased without a call.
_CONNECTION_VALUES = {b"keep-alive": b"keep-alive", b"Keep-Alive": b"keep-alive",
                      b"close": b"close", b"Close": b"close"}
_VERSIONS = {b"0": "1.0", b"1": "1.1"}  # the minor digit _RESPONSE allows
