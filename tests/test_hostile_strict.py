"""A strict HTTP/1.1 reader of its own, the recording upstream built on it, and its tests.

The hostile suites check one invariant at the upstream: whatever reaches it
parses strictly, never carries both Content-Length and Transfer-Encoding, and
it never sees more requests than the client got responses. That must not be
judged by llhttp, the parser Rex itself uses, or a quirk shared by both sides
would pass unnoticed; so the grammar of RFC 9112 §2-§7 is written out here,
with every leniency refused (bare LF, obs-fold, whitespace before a colon,
lists in Content-Length, any coding but a lone ``chunked``).

Test support only: the product never imports this module, and nothing here
touches Rex. ``StrictUpstream`` is a ``RawUpstream`` handler; ``read_replies``
reads what Rex sent a client, with the same strictness; ``load_case`` reads
the data files under ``tests/hostile/`` (format in its README).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_REQUEST_LINE = re.compile(rb"([%s]+) (/[\x21\x22\x24-\x7e]*) HTTP/1\.1" % TCHAR)
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*")
# RFC 9110 §5.5: field-value = *field-content, no leading or trailing whitespace
# once OWS is removed; VCHAR, obs-text, and SP/HTAB between them.
_FIELD = re.compile(rb"([%s]+):[ \t]*((?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?)" % TCHAR)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:;[%s]+(?:=(?:[%s]+|\"[^\"\r\n\\]*\"))?)*)"
                         % (TCHAR, TCHAR))
MAX_HEAD = 1 << 20
KEYS = frozenset({"absent", "body", "expect", "method", "present", "target", "then", "trailer",
                  "upstream", "xfail"})
PAUSE = b"<<pause>>"
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[rnt0\\])")
_BYTES = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}


def load_case(path: Path) -> tuple[dict[str, str], list[bytes]]:
    """(meta, parts) of one ``.http`` file; ``parts`` are split at ``<<pause>>`` lines.

    The format of ``tests/http`` (``tests/http/README.md``): lines go out with
    CRLF, a trailing ``\\`` means no line end, escapes ``\\r \\n \\t \\0 \\xNN``.
    Leading ``# key: value`` lines with a key in ``KEYS`` are metadata.
    """
    lines = path.read_bytes().split(b"\n")
    meta = {}
    while lines and lines[0].startswith(b"#"):
        key, sep, value = lines.pop(0)[2:].decode().partition(":")
        if sep and key in KEYS:
            meta[key] = value.strip()
    if lines and lines[-1] == b"":
        lines.pop()  # the file's own final newline
    parts, out = [], []
    for line in lines:
        if line == PAUSE:
            parts.append(b"".join(out))
            out = []
            continue
        end = b"\r\n"
        if line.endswith(b"\\") and not line.endswith(b"\\\\"):
            line, end = line[:-1], b""
        out.append(_ESCAPE.sub(_unescape, line) + end)
    return meta, [*parts, b"".join(out)]


def xfail_marks(path: Path) -> list:
    """A strict xfail mark for a case whose ``# xfail:`` says why it fails, else none."""
    reason = load_case(path)[0].get("xfail")
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


def unescape(text: str) -> bytes:
    """A metadata value with the data files' escapes (``\\r``, ``\\xNN``...) as bytes."""
    return _ESCAPE.sub(_unescape, text.encode("latin-1"))


def _unescape(match: re.Match) -> bytes:
    code = match.group(1)
    return bytes([int(code[1:], 16)]) if code[:1] == b"x" else _BYTES[code]


class Violation(Exception):
    """The bytes break RFC 9112 somewhere a lenient parser would have guessed."""


@dataclass
class Message:
    start: bytes  # request line or status line
    fields: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.fields if k.lower() == name]

    @property
    def status(self) -> int:
        return int(self.start.split(b" ", 2)[1])


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    fields = []
    for line in lines:
        match = _FIELD.fullmatch(line)
        if match is None:
            raise Violation(f"not a field line: {line[:80]!r}")
        fields.append((match.group(1), match.group(2).rstrip(b" \t")))
    return fields


def _framing(msg: Message) -> tuple[int | None, bool]:
    """(Content-Length, chunked) by RFC 9112 §6, refusing every ambiguity."""
    lengths, codings = msg.values(b"content-length"), msg.values(b"transfer-encoding")
    if lengths and codings:
        raise Violation("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or (lengths and not re.fullmatch(rb"[0-9]{1,18}", lengths[0])):
        raise Violation(f"bad Content-Length {lengths!r}")
    if codings and codings != [b"chunked"]:
        raise Violation(f"Transfer-Encoding other than one chunked: {codings!r}")
    return (int(lengths[0]) if lengths else None), bool(codings)


def _chunked(buf: bytes, pos: int) -> tuple[bytes, list, int] | None:
    """(body, trailers, end) of a chunked body starting at ``pos``; None: incomplete."""
    parts = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        match = _CHUNK_SIZE.fullmatch(buf[pos:eol])
        if match is None:
            raise Violation(f"bad chunk line {buf[pos:eol][:40]!r}")
        size = int(match.group(1), 16)
        pos = eol + 2
        if size == 0:
            break
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise Violation("chunk data not followed by CRLF")
        parts.append(buf[pos:pos + size])
        pos += size + 2
    end = buf.find(b"\r\n\r\n", pos - 2)
    if end < 0:
        return None
    trailer_lines = buf[pos:end].split(b"\r\n") if end > pos - 2 and buf[pos:end] else []
    return b"".join(parts), _fields(_checked(trailer_lines)), end + 4


def _checked(lines: list[bytes]) -> list[bytes]:
    for line in lines:
        if b"\r" in line or b"\n" in line or b"\0" in line:
            raise Violation(f"bare CR, LF or NUL in {line[:80]!r}")
    return lines


def take(buf: bytes, *, request: bool, head_request: bool = False,
         eof: bool = False) -> tuple[Message | None, int]:
    """The first complete message in ``buf`` and the bytes it used; (None, 0) if incomplete.

    ``eof``: no more bytes will come, so a close-delimited response body ends here.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD or (eof and buf):
            raise Violation(f"no complete head in {buf[:80]!r}")
        return None, 0
    start, *lines = _checked(buf[:end].split(b"\r\n"))
    if not (_REQUEST_LINE if request else _STATUS_LINE).fullmatch(start):
        raise Violation(f"bad start line {start[:80]!r}")
    msg = Message(start, _fields(lines))
    length, chunked = _framing(msg)
    pos = end + 4
    if request and len(msg.values(b"host")) != 1:
        raise Violation("a request needs exactly one Host")
    if not request and (head_request or msg.status < 200 or msg.status in (204, 304)):
        if msg.status < 200 and (length is not None or chunked):
            raise Violation("a 1xx response with framing fields")
        return msg, pos  # no body, whatever the fields say (RFC 9112 §6.3 items 1-3)
    if chunked:
        done = _chunked(buf, pos)
        if done is None:
            if eof:
                raise Violation("chunked body cut short")
            return None, 0
        msg.body, msg.trailers, pos = done
        return msg, pos
    if length is None:
        if request:
            return msg, pos
        if not eof:
            return None, 0  # a body delimited by the close (RFC 9112 §6.3 item 8)
        msg.body = buf[pos:]
        return msg, len(buf)
    if len(buf) < pos + length:
        if eof:
            raise Violation("body shorter than its Content-Length")
        return None, 0
    msg.body = buf[pos:pos + length]
    return msg, pos + length


def take_all(buf: bytes, *, request: bool, eof: bool = False) -> tuple[list[Message], int]:
    """Every complete message at the start of ``buf`` and the bytes they used."""
    out, used = [], 0
    while True:
        msg, n = take(buf[used:], request=request, eof=eof and used < len(buf))
        if msg is None:
            return out, used
        out.append(msg)
        used += n
        if used == len(buf):
            return out, used


class StrictUpstream:
    """A RawUpstream handler: records every request it can parse strictly, answers 200.

    Any violation is kept in ``violations`` and ends that connection. A request
    cut short by a close is kept in ``aborted``: Rex hangs up on an upstream
    when the client's body turns out bad, and a close can never be misread as
    a request. The body of each answer names the request's number.
    """

    def __init__(self) -> None:
        self.requests: list[Message] = []
        self.violations: list[str] = []
        self.aborted: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, sock: socket.socket) -> None:
        buf = b""
        while data := sock.recv(65536):
            buf += data
            try:
                messages, used = take_all(buf, request=True)
            except Violation as exc:
                with self.lock:
                    self.violations.append(f"{exc} in {buf[:200]!r}")
                return
            buf = buf[used:]
            for msg in messages:
                with self.lock:
                    self.requests.append(msg)
                    body = b"request %d" % len(self.requests)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        if buf:
            with self.lock:
                self.aborted.append(buf)


def read_replies(sock: socket.socket, timeout: float = 5.0,
                 head_requests: int = 0) -> tuple[list[Message], bytes]:
    """Every response Rex sends on ``sock`` until it closes: (final responses, raw bytes).

    Raises AssertionError when Rex neither closes nor finishes within ``timeout``
    (a hang) and ``Violation`` for a byte stream that is no strict HTTP/1.1.
    ``head_requests``: how many leading responses answer HEAD (they have no body).
    """
    deadline = time.monotonic() + timeout
    buf, pos, replies = b"", 0, []
    eof = False
    while True:
        while pos < len(buf):
            msg, used = take(buf[pos:], request=False, eof=eof,
                             head_request=len(replies) < head_requests)
            if msg is None:
                break
            pos += used
            if msg.status >= 200:
                replies.append(msg)
        if eof:
            return replies, buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no close within {timeout}s; got {buf[:300]!r}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue  # the deadline check above reports it
        except ConnectionResetError:
            data = b""  # a reset after the last response is a close too
        eof = not data
        buf += data


# -- the tools' own tests: it must refuse what the hostile suites rely on it refusing --

GOOD = b"POST /x?y HTTP/1.1\r\nHost: a\r\nX-Y:  v w \r\nContent-Length: 3\r\n\r\nabc"


def test_a_plain_request_and_its_parts():
    msg, used = take(GOOD + b"GET", request=True)
    assert used == len(GOOD) and msg.body == b"abc"
    assert msg.fields == [(b"Host", b"a"), (b"X-Y", b"v w"), (b"Content-Length", b"3")]


def test_chunked_body_with_extension_and_trailers():
    data = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;n=\"v\"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    msg, used = take(data, request=True)
    assert (msg.body, msg.trailers, used) == (b"abc", [(b"X-T", b"1")], len(data))
    assert take(data[:-1], request=True) == (None, 0)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
])
def test_every_leniency_is_a_violation(data):
    with pytest.raises(Violation):
        take(data, request=True)


def test_responses_by_status_method_and_close():
    no_content = b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"
    assert take(no_content + b"rest", request=False)[1] == len(no_content)
    head_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    assert take(head_reply, request=False, head_request=True)[1] == len(head_reply)
    assert take(b"HTTP/1.1 200 OK\r\n\r\nab", request=False) == (None, 0)
    assert take(b"HTTP/1.1 200 OK\r\n\r\nab", request=False, eof=True)[0].body == b"ab"
    with pytest.raises(Violation):
        take(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", request=False, eof=True)
    with pytest.raises(Violation):
        take(b"HTTP/1.1 20 OK\r\n\r\n", request=False)


def test_case_files_are_read_like_tests_http(tmp_path):
    case = tmp_path / "c.http"
    case.write_bytes(b"# A comment: not metadata\n# expect: 502\n# body:\nHTTP/1.1 200 OK\n"
                     b"X: \\0\\x01\\\\\n\nhi\\\n<<pause>>\nmore\\\n")
    meta, parts = load_case(case)
    assert meta == {"expect": "502", "body": ""}
    assert parts == [b"HTTP/1.1 200 OK\r\nX: \0\x01\\\r\n\r\nhi", b"more"]
