"""Unit tests of the WSGI policy modules: environ, start_response checks, framing, input.

No master and no sockets: the pure helpers on plain data, and ``WSGIApps.serve``
driven through a stand-in connection that records what would be sent.
"""

from __future__ import annotations

import io
import os
import re
import sys
from types import SimpleNamespace
from wsgiref.validate import check_environ

import pytest
import yaml
from conftest import ROOT

from rex_workers.config.loader import load_config
from rex_workers.config.model import Config, Instance, Route
from rex_workers.http.request import HTTPError, Request
from rex_workers.wsgi.environ import build_environ, header_vars, split_path, url_scheme, wsgi_str
from rex_workers.wsgi.files import FileWrapper
from rex_workers.wsgi.host import WSGIApps
from rex_workers.wsgi.input import ErrorStream, Input
from rex_workers.wsgi.load import WSGILoadError, extend_sys_path, load_app, load_route_app
from rex_workers.wsgi.response import (
    CHUNKED,
    CLOSE,
    LENGTH,
    NO_BODY,
    WSGIResponseError,
    chunk,
    framing,
    parse_head,
    render,
)


def request(target: bytes = b"/app/x?q=1", method: str = "GET", headers=(), **kw) -> Request:
    raw_path, _, query = target.partition(b"?")
    fields = {"method": method, "target": target, "path": raw_path.decode(), "query": query,
              "version": "1.1", "headers": list(headers), "raw_path": raw_path,
              "client_addr": ("10.0.0.7", 5555), "server_port": 8080, "host": "example.test"}
    fields.update(kw)
    return Request(**fields)


# -- environ -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "strip", "expected"), [
    ("/app/users/7", 1, ("/app", "/users/7")),
    ("/app", 1, ("/app", "")),
    ("/app/", 1, ("/app", "/")),
    ("/a/b/c", 2, ("/a/b", "/c")),
    ("/anything", 0, ("", "/anything")),
    ("/", 0, ("", "/")),
])
def test_split_path(path, strip, expected):
    assert split_path(path, strip) == expected


def test_paths_are_latin1_strings_holding_utf8_bytes():
    assert wsgi_str("/caf\u00e9") == "/caf\u00c3\u00a9"
    env = build_environ(request(b"/app/caf%C3%A9", path="/app/caf\u00e9"), 1, trusted=False,
                        server_name="h", wsgi={})
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/caf\u00e9"


@pytest.mark.parametrize(("scheme", "xfp", "trusted", "expected"), [
    ("http", None, True, "http"),
    ("https", None, False, "https"),
    ("http", b"https", False, "http"),  # anyone can send the header: ignored
    ("http", b"https", True, "https"),
    ("http", b"HTTPS, http", True, "https"),  # first hop's value
    ("http", b"gopher", True, "http"),
    ("https", b"http", True, "https"),  # TLS to Rex itself is a fact, not a claim
])
def test_url_scheme(scheme, xfp, trusted, expected):
    headers = [(b"X-Forwarded-Proto", xfp)] if xfp else []
    assert url_scheme(request(scheme=scheme, headers=headers), trusted) == expected


def test_header_vars():
    headers = [(b"Accept", b"a"), (b"accept", b"b"), (b"Cookie", b"x=1"), (b"Cookie", b"y=2"),
               (b"X-User_Id", b"spoof"), (b"Proxy", b"http://evil"), (b"Content-Type", b"t/x"),
               (b"Content-Length", b"3"), (b"X-Forwarded-For", b"1.2.3.4"), (b"Dash-Ed", b"\xe9")]
    assert header_vars(headers, trusted=False) == {
        "HTTP_ACCEPT": "a, b", "HTTP_COOKIE": "x=1; y=2", "CONTENT_TYPE": "t/x",
        "HTTP_DASH_ED": "\u00e9"}
    assert header_vars(headers, trusted=True)["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"


def test_environ_passes_wsgirefs_checks():
    req = request(b"/app/x?a=%20&b=\xe9", method="POST", headers=[(b"Content-Length", b"4")],
                  content_length=4)
    env = build_environ(req, 1, trusted=False, server_name="example.test",
                        wsgi={"wsgi.input": Input(iter([b"body"]), 4),
                              "wsgi.errors": ErrorStream(print)})
    check_environ(env)
    assert env["QUERY_STRING"] == "a=%20&b=\u00e9"  # raw, decoded as latin-1
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x")
    assert env["CONTENT_LENGTH"] == "4"
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.0.0.7", "5555")
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.test", "8080")
    assert env["RAW_URI"] == "/app/x?a=%20&b=\u00e9"


def test_chunked_request_has_no_content_length():
    req = request(method="POST", headers=[(b"Transfer-Encoding", b"chunked")], chunked=True)
    env = build_environ(req, 1, trusted=False, server_name="h", wsgi={})
    assert "CONTENT_LENGTH" not in env
    assert env["wsgi.input_terminated"] is True


# -- start_response and framing -----------------------------------------------------------

def test_parse_head_keeps_end_to_end_fields_and_drops_hop_by_hop():
    head = parse_head("201 Created", [("Content-Type", "text/plain"), ("Content-Length", "5"),
                                      ("Connection", "close"), ("Keep-Alive", "timeout=5"),
                                      ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"),
                                      ("Set-Cookie", "b=2")])
    assert (head.status, head.status_line, head.content_length, head.close) == (
        201, b"201 Created", 5, True)
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1"),
                            (b"Set-Cookie", b"b=2")]


def test_status_without_reason_gets_the_standard_one():
    assert parse_head("404", []).status_line == b"404 Not Found"


@pytest.mark.parametrize(("status", "headers"), [
    (200, []),
    (b"200 OK", []),
    ("200OK", []),
    ("99 Low", []),
    ("100 Continue", []),
    ("200 OK\r\nX: y", []),
    ("200 OK", ()),
    ("200 OK", [("Bad Name", "v")]),
    ("200 OK", [("X", "line\r\nInjected: 1")]),
    ("200 OK", [("X", b"bytes")]),
    ("200 OK", [("X", "\u20ac")]),
    ("200 OK", [["X", "list, not tuple"]]),
    ("200 OK", [("Content-Length", "-1")]),
    ("200 OK", [("Content-Length", "1"), ("Content-Length", "2")]),
])
def test_parse_head_refuses_what_pep3333_forbids(status, headers):
    with pytest.raises(WSGIResponseError):
        parse_head(status, headers)


@pytest.mark.parametrize(("method", "status", "length", "version", "keep", "expected"), [
    ("GET", 200, 10, "1.1", True, (LENGTH, True)),
    ("GET", 200, None, "1.1", True, (CHUNKED, True)),
    ("GET", 200, None, "1.0", True, (CLOSE, False)),
    ("GET", 200, 10, "1.0", True, (LENGTH, True)),
    ("HEAD", 200, None, "1.1", True, (NO_BODY, True)),
    ("GET", 204, None, "1.1", True, (NO_BODY, True)),
    ("GET", 304, None, "1.0", True, (NO_BODY, True)),
    ("GET", 200, 10, "1.1", False, (LENGTH, False)),
])
def test_framing(method, status, length, version, keep, expected):
    head = parse_head(f"{status} X", [])
    head.content_length = length
    assert framing(head, method, version, keep) == expected


def test_framing_honours_connection_close_from_the_app():
    head = parse_head("200 OK", [("Connection", "close"), ("Content-Length", "0")])
    assert framing(head, "GET", "1.1", True) == (LENGTH, False)


def test_render():
    head = parse_head("200 OK", [("Content-Type", "text/plain")])
    out = render(head, CHUNKED, True, "1.1", b"DATE")
    assert out == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: DATE\r\n"
                   b"Server: rex\r\nTransfer-Encoding: chunked\r\n\r\n")
    head = parse_head("204 No Content", [("Server", "app"), ("Date", "then"),
                                         ("Content-Length", "0")])
    assert render(head, NO_BODY, True, "1.0", b"DATE") == (
        b"HTTP/1.1 204 No Content\r\nServer: app\r\nDate: then\r\nConnection: keep-alive\r\n\r\n")
    head = parse_head("200 OK", [("Content-Length", "3")])
    assert render(head, LENGTH, False, "1.1", b"D").endswith(
        b"Content-Length: 3\r\nConnection: close\r\n\r\n")


def test_chunk():
    assert chunk(b"hello world, chunked") == b"14\r\nhello world, chunked\r\n"


# -- wsgi.input and wsgi.errors --------------------------------------------------------------

def pieces(*parts: bytes, done: list | None = None):
    yield from parts
    if done is not None:
        done.append(True)


def test_input_read_sizes_across_pieces():
    stream = Input(pieces(b"abc", b"defg", b"h"))
    assert stream.read(2) == b"ab"
    assert stream.read(4) == b"cdef"
    assert stream.read() == b"gh"
    assert stream.read() == b"" and stream.read(5) == b""


def test_input_lines():
    stream = Input(pieces(b"one\ntw", b"o\nthr", b"ee\nfour"))
    assert stream.readline() == b"one\n"
    assert stream.readline(2) == b"tw"
    assert stream.readline() == b"o\n"
    assert stream.readlines() == [b"three\n", b"four"]
    assert list(Input(pieces(b"a\nb\n", b"c"))) == [b"a\n", b"b\n", b"c"]
    assert Input(pieces(b"a\nb\nc\n")).readlines(3) == [b"a\n", b"b\n"]


def test_input_with_a_length_finishes_the_body_without_an_extra_read():
    done: list = []
    stream = Input(pieces(b"12", b"345", done=done), length=5)
    assert stream.read(5) == b"12345"
    assert done == [True]  # the end-of-body event was consumed: keep-alive is possible
    assert stream.exhausted


def test_input_of_an_empty_body_never_touches_the_connection():
    def forbidden():
        raise AssertionError("read from the connection")
        yield b""

    assert Input(forbidden(), length=0).read() == b""


def test_input_repeats_the_connections_error():
    def failing():
        yield b"part"
        raise HTTPError("request body over the limit", 413)

    stream = Input(failing())
    assert stream.read(4) == b"part"
    for _ in range(2):
        with pytest.raises(HTTPError) as info:
            stream.read()
        assert info.value.status == 413


def test_error_stream_writes_whole_lines():
    lines: list[str] = []
    errors = ErrorStream(lines.append, "app: ")
    errors.write("one\ntw")
    errors.writelines(["o\n", "three"])
    assert lines == ["app: one", "app: two"]
    errors.flush()
    assert lines[-1] == "app: three"


def test_file_wrapper_iterates_and_closes():
    data = io.BytesIO(b"x" * 10)
    wrapper = FileWrapper(data, 4)
    assert list(wrapper) == [b"xxxx", b"xxxx", b"xx"]
    assert wrapper.file_span() is None  # BytesIO has no file descriptor
    wrapper.close()
    assert data.closed


def test_file_wrapper_span_starts_at_the_file_position(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as f:
        f.seek(3)
        assert FileWrapper(f).file_span() == (f.fileno(), 3, 7)


# -- loading ---------------------------------------------------------------------------------

@pytest.fixture
def apps_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    config = Config(path=str(ROOT / "tests" / "apps" / "rex.config.yaml"), digest="",
                    instances=())
    extend_sys_path(config)
    return config


def test_load_app_forms(apps_path):
    import rawapps

    assert load_app("rawapps:app") is rawapps.app
    assert callable(load_app("flaskapp:create_app()"))
    with pytest.raises(AttributeError, match="module 'rawapps' has no attribute 'nope'"):
        load_app("rawapps:nope")
    with pytest.raises(TypeError, match="not a WSGI callable"):
        load_app("rawapps:VIEWS")


def test_load_failures_name_the_destination(apps_path):
    with pytest.raises(WSGILoadError, match=r"^wsgi:nosuch\.mod:app: ModuleNotFoundError: "
                                            r"No module named 'nosuch'$"):
        load_route_app("nosuch.mod:app")

    def exits(spec):
        raise SystemExit(3)

    with pytest.raises(WSGILoadError, match="wsgi:x:app: SystemExit: 3"):
        load_route_app("x:app", exits)


def test_extend_sys_path_puts_pythonpath_then_the_config_dir_first(monkeypatch):
    monkeypatch.setattr(sys, "path", ["/usr/lib/python", "/b"])
    extend_sys_path(Config(path="/etc/rex/rex.config.yaml", digest="", instances=(),
                           pythonpath=("/a", "/b")))
    assert sys.path == ["/a", "/etc/rex", "/usr/lib/python", "/b"]


# -- serving through a stand-in connection ---------------------------------------------------

class FakeConn:
    """What ``WSGIApps.serve`` uses of a ClientConn, recording the bytes it sends."""

    def __init__(self, body: bytes = b"") -> None:
        self.out = bytearray()
        self.keep_alive = True
        self.errors: list[str] = []
        self._body = [body] if body else []
        self.sock = SimpleNamespace(getsockname=lambda: ("127.0.0.1", 8080),
                                    settimeout=lambda timeout: None)
        self.rt = None

    def body_pieces(self):
        while self._body:
            yield self._body.pop(0)

    def body_pending(self) -> bool:
        return bool(self._body)

    def send(self, data: bytes) -> None:
        self.out += data

    def log_error(self, message: str) -> None:
        self.errors.append(message)


def serve(app, req: Request | None = None, body: bytes = b"",
          conn: FakeConn | None = None) -> tuple[FakeConn, tuple]:
    route = Route(path="/app", index=0, wsgi="x:app")
    config = Config(path="", digest="", instances=(Instance(index=0, port=8080,
                                                            routes=(route,)),))
    rt = SimpleNamespace(config=config, trusted=frozenset(), draining=False,
                         timeouts=SimpleNamespace(read=5.0))
    conn = conn or FakeConn(body)
    conn.rt = rt
    apps = WSGIApps(rt, load=lambda spec: app)
    return conn, apps.serve(conn, req or request(), route, 1)


def simple(body_parts, headers=(("Content-Type", "text/plain"),)):
    def app(environ, start_response):
        start_response("200 OK", list(headers))
        return body_parts

    return app


def test_list_body_gets_a_content_length():
    conn, result = serve(simple([b"ab", b"cd"]))
    assert result == (200, 4)
    assert b"Content-Length: 4\r\n" in conn.out and conn.out.endswith(b"\r\n\r\nabcd")


def test_generator_body_is_chunked_and_empty_pieces_are_skipped():
    conn, result = serve(simple(iter([b"", b"ab", b"", b"cd"])))
    assert result == (200, 4)
    assert conn.out.endswith(b"\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")


def test_body_longer_than_content_length_is_cut():
    conn, result = serve(simple(iter([b"abc", b"def"]), [("Content-Length", "4")]))
    assert result == (200, 4)
    assert conn.out.endswith(b"\r\n\r\nabcd") and conn.keep_alive
    assert "longer than its Content-Length" in conn.errors[0]


def test_body_shorter_than_content_length_closes_the_connection():
    conn, result = serve(simple(iter([b"ab"]), [("Content-Length", "4")]))
    assert result == (200, 2)
    assert not conn.keep_alive


def test_app_error_before_the_head_becomes_a_500_for_the_handler():
    def app(environ, start_response):
        raise KeyError("missing")

    conn = FakeConn()
    with pytest.raises(HTTPError) as info:
        serve(app, conn=conn)
    assert (info.value.status, info.value.close) == (500, False)
    assert "KeyError: 'missing'" in conn.errors[0]  # the traceback is logged


def test_str_body_is_an_app_error():
    with pytest.raises(HTTPError) as info:
        serve(simple(iter(["text"])))
    assert info.value.status == 500


def test_app_error_after_the_head_closes_the_connection():
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"part"
        raise RuntimeError("late")

    conn, result = serve(app)
    assert result == (200, 4)
    assert not conn.keep_alive
    assert not conn.out.endswith(b"0\r\n\r\n")
    assert "RuntimeError: late" in conn.errors[0]


def test_start_response_twice_without_exc_info_is_an_error():
    def app(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    with pytest.raises(HTTPError):
        serve(app)


def test_unread_body_closes_the_connection():
    req = request(method="POST", content_length=4)
    conn, _ = serve(simple([b"ok"]), req, body=b"data")
    assert b"Connection: close" in conn.out and not conn.keep_alive


def test_read_body_keeps_the_connection():
    def app(environ, start_response):
        data = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [data.upper()]

    conn, _ = serve(app, request(method="POST", content_length=4), body=b"data")
    assert conn.out.endswith(b"DATA") and conn.keep_alive


def test_head_sends_the_head_only():
    conn, result = serve(simple([b"body"]), request(method="HEAD"))
    assert conn.out.endswith(b"Content-Length: 4\r\n\r\n")  # what GET would have said
    assert result == (200, 0)
    conn, _ = serve(simple([]), request(method="HEAD"))
    assert b"Content-Length" not in conn.out and b"Transfer-Encoding" not in conn.out


def file_app(path):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        f = open(path, "rb")  # noqa: SIM115 - the server closes it through the wrapper
        f.seek(2)  # PEP 3333: transmission starts at the current position
        return environ["wsgi.file_wrapper"](f, 4)

    return app


def pread_pump(conn: FakeConn):
    """Stands in for rex_static's send_file: the same contract, into ``conn.out``."""
    def send_file(sock, fd, offset, count):
        data = os.pread(fd, count, offset)
        conn.out += data
        return len(data)

    return send_file


def test_wrapped_file_goes_to_the_pump_from_its_position(tmp_path, monkeypatch):
    conn = FakeConn()
    monkeypatch.setattr("rex_workers.wsgi.host.send_file", pread_pump(conn))
    monkeypatch.setattr("rex_workers.wsgi.host.send_head", lambda sock, head, file_follows:
                        conn.out.extend(head))
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    _, result = serve(file_app(path), conn=conn)
    assert result == (200, 8)
    assert conn.out.endswith(b"Content-Length: 8\r\n\r\n23456789") and conn.keep_alive


def test_wrapped_file_shorter_than_announced_closes_the_connection(tmp_path, monkeypatch):
    conn = FakeConn()
    monkeypatch.setattr("rex_workers.wsgi.host.send_file", lambda sock, fd, offset, count: count - 1)
    monkeypatch.setattr("rex_workers.wsgi.host.send_head", lambda *args, **kw: None)
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    _, result = serve(file_app(path), conn=conn)
    assert result == (200, 7)
    assert not conn.keep_alive  # a file truncated under us: the client must see the cut


def test_wrapped_stream_without_a_file_is_iterated():
    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"abcdef"), 4)

    conn, result = serve(app)
    assert result == (200, 6)
    assert conn.out.endswith(b"\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")


# -- the documented configs ------------------------------------------------------------------

DOC_CONFIGS = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "wsgi.md").read_text(), re.S)


def test_the_docs_show_a_flask_and_a_django_config():
    assert len(DOC_CONFIGS) == 2
    assert "create_app()" in DOC_CONFIGS[0] and "mysite.wsgi:application" in DOC_CONFIGS[1]


@pytest.mark.parametrize("text", DOC_CONFIGS)
def test_documented_config_loads(text, tmp_path):
    raw = yaml.safe_load(text)
    for directory in raw.get("pythonpath", []):
        (tmp_path / directory).mkdir(parents=True)
    for instance in raw["server"]["instances"]:
        if "public" in instance:
            (tmp_path / instance["public"]).mkdir(parents=True)
    path = tmp_path / "rex.config.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.has_wsgi and config.monkey_patch is False
    assert all(os.path.isabs(p) for p in config.pythonpath)
