"""Unit tests of the WSGI policy modules: environ, start_response checks, framing, input.

No master: the pure helpers on plain data, and ``WSGIApps.serve`` driven through
Rex's real HTTP/1.1 connection over a socket pair in this process.
"""

from __future__ import annotations

import io
import os
import re
import sys
from wsgiref.validate import check_environ

import pytest
import yaml
from conftest import ROOT
from inproc import Served, exchange, runtime

from rex_workers.config.loader import load_config
from rex_workers.config.model import Config, Instance, Route
from rex_workers.http.h1write import CHUNKED, CLOSE, LENGTH, NO_BODY, chunk, framing, head
from rex_workers.http.request import HTTPError, Request
from rex_workers.wsgi.environ import build_environ, header_vars, split_path, url_scheme, wsgi_str
from rex_workers.wsgi.files import FileWrapper
from rex_workers.wsgi.host import WSGIApps
from rex_workers.wsgi.input import ErrorStream, Input
from rex_workers.wsgi.load import WSGILoadError, extend_sys_path, load_app, load_route_app
from rex_workers.wsgi.response import WSGIResponseError, fields, parse_head


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
    assert (head.status, head.reason, head.content_length, head.close) == (
        201, b"Created", 5, True)
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1"),
                            (b"Set-Cookie", b"b=2")]


def test_status_without_reason_gets_the_standard_one():
    assert parse_head("404", []).reason == b"Not Found"


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
    assert framing(method, version, status, length, keep) == expected


def test_framing_honours_connection_close_from_the_app():
    app = simple([b""], [("Connection", "close"), ("Content-Length", "0")])
    served = serve(app)
    assert b"Connection: close\r\n" in served.out and not served.keep_alive


def render(wsgi_head, mode, keep_alive, version, date):
    """The head the connection writes for what an app passed to start_response."""
    return head(wsgi_head.status, fields(wsgi_head, date), mode=mode,
                length=wsgi_head.content_length, keep_alive=keep_alive, version=version,
                reason=wsgi_head.reason)


def test_render():
    wsgi_head = parse_head("200 OK", [("Content-Type", "text/plain")])
    out = render(wsgi_head, CHUNKED, True, "1.1", b"DATE")
    assert out == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: DATE\r\n"
                   b"Server: rex\r\nTransfer-Encoding: chunked\r\n\r\n")
    wsgi_head = parse_head("204 No Content", [("Server", "app"), ("Date", "then"),
                                              ("Content-Length", "0")])
    assert render(wsgi_head, NO_BODY, True, "1.0", b"DATE") == (
        b"HTTP/1.1 204 No Content\r\nServer: app\r\nDate: then\r\nConnection: keep-alive\r\n\r\n")
    wsgi_head = parse_head("200 OK", [("Content-Length", "3")])
    assert render(wsgi_head, LENGTH, False, "1.1", b"D").endswith(
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


# -- serving through Rex's connection ----------------------------------------------------

GET = b"GET /app/x?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
HEAD = b"HEAD /app/x?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
POST = b"POST /app/x HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4\r\n\r\ndata"


def serve(app, raw: bytes = GET) -> Served:
    route = Route(path="/app", index=0, wsgi="x:app")
    config = Config(path="", digest="", instances=(Instance(index=0, port=8080,
                                                            routes=(route,)),))
    ctx = runtime()
    apps = WSGIApps(config, ctx.trusted.__contains__, load=lambda spec: app)
    return exchange(lambda stream: apps.serve(stream, route, 1), raw, ctx)


def simple(body_parts, headers=(("Content-Type", "text/plain"),)):
    def app(environ, start_response):
        start_response("200 OK", list(headers))
        return body_parts

    return app


def test_list_body_gets_a_content_length():
    served = serve(simple([b"ab", b"cd"]))
    assert (served.status, served.sent) == (200, 4)
    assert b"Content-Length: 4\r\n" in served.out and served.out.endswith(b"\r\n\r\nabcd")


def test_generator_body_is_chunked_and_empty_pieces_are_skipped():
    served = serve(simple(iter([b"", b"ab", b"", b"cd"])))
    assert (served.status, served.sent) == (200, 4)
    assert served.out.endswith(b"\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")


def test_body_longer_than_content_length_is_cut():
    served = serve(simple(iter([b"abc", b"def"]), [("Content-Length", "4")]))
    assert (served.status, served.sent) == (200, 4)
    assert served.out.endswith(b"\r\n\r\nabcd") and served.keep_alive
    assert "longer than its Content-Length" in served.errors[0]


def test_body_shorter_than_content_length_closes_the_connection():
    served = serve(simple(iter([b"ab"]), [("Content-Length", "4")]))
    assert (served.status, served.sent) == (200, 2)
    assert not served.keep_alive


def test_app_error_before_the_head_becomes_a_500():
    def app(environ, start_response):
        raise KeyError("missing")

    served = serve(app)
    assert served.status == 500 and served.out.startswith(b"HTTP/1.1 500 ")
    assert served.keep_alive  # the request was whole: the connection is still good
    assert "KeyError: 'missing'" in served.errors[0]  # the traceback is logged


def test_str_body_is_an_app_error():
    assert serve(simple(iter(["text"]))).status == 500


def test_app_error_after_the_head_closes_the_connection():
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"part"
        raise RuntimeError("late")

    served = serve(app)
    assert (served.status, served.sent) == (200, 4)
    assert not served.keep_alive
    assert not served.out.endswith(b"0\r\n\r\n")
    assert "RuntimeError: late" in served.errors[0]


def test_start_response_twice_without_exc_info_is_an_error():
    def app(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    assert serve(app).status == 500


def test_unread_body_closes_the_connection():
    served = serve(simple([b"ok"]), POST)
    assert b"Connection: close" in served.out and not served.keep_alive


def test_read_body_keeps_the_connection():
    def app(environ, start_response):
        data = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [data.upper()]

    served = serve(app, POST)
    assert served.out.endswith(b"DATA") and served.keep_alive


def test_head_sends_the_head_only():
    served = serve(simple([b"body"]), HEAD)
    assert served.out.endswith(b"Content-Length: 4\r\n\r\n")  # what GET would have said
    assert (served.status, served.sent) == (200, 0)
    served = serve(simple([]), HEAD)
    assert b"Content-Length" not in served.out and b"Transfer-Encoding" not in served.out


def file_app(path, headers=()):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *headers])
        f = open(path, "rb")  # noqa: SIM115 - the server closes it through the wrapper
        f.seek(2)  # PEP 3333: transmission starts at the current position
        return environ["wsgi.file_wrapper"](f, 4)

    return app


def test_wrapped_file_goes_to_the_pump_from_its_position(tmp_path, sendfile_calls):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    served = serve(file_app(path))
    assert (served.status, served.sent) == (200, 8)
    assert served.out.endswith(b"Content-Length: 8\r\n\r\n23456789") and served.keep_alive
    assert sum(sendfile_calls) == 8  # zero-copy: the kernel moved the bytes


def test_wrapped_file_shorter_than_announced_closes_the_connection(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    served = serve(file_app(path, [("Content-Length", "10")]))  # 8 bytes left from position 2
    assert (served.status, served.sent) == (200, 8)
    assert not served.keep_alive  # the client must see the cut, not wait for 2 more bytes
    assert "shorter than its Content-Length" in served.errors[0]


def test_wrapped_stream_without_a_file_is_iterated():
    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"abcdef"), 4)

    served = serve(app)
    assert (served.status, served.sent) == (200, 6)
    assert served.out.endswith(b"\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")


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
