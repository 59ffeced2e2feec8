"""End-to-end: real Flask, Django and plain WSGI apps served in-process by a real Rex.

One master with one worker serves every app for the whole module (starting
Rex is the slow part); the apps live in tests/apps and reach the worker's
sys.path through ``pythonpath:``. Tests that need their own config (import
errors, the config directory on sys.path) start their own master.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ROOT, Rex, Upstream, free_port, port_open, raw_request, site_config, wait_for

APPS = ROOT / "tests" / "apps"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("wsgi")
    (work / "public").mkdir()
    (work / "public" / "hello.txt").write_text("static beside wsgi\n")
    api = Upstream()
    rex = Rex(work, work / "home")
    port = rex.serve(f"""\
        - path: /api
          destination: {api.url}
        - path: /flask
          destination: wsgi:flaskapp:create_app()
        - path: /pooled
          destination: wsgi:flaskapp:create_app()
          pool: 1
        - path: /dj
          destination: wsgi:djsite.wsgi:application
        - path: /raw
          destination: wsgi:rawapps:app
        - path: /validated
          destination: wsgi:rawapps:validated
    """, f"""\
        workers: 1
        pythonpath: ["{APPS}"]
        trusted_proxies: [127.0.0.1/32]
    """, instance="public: ./public")
    rex.url = f"http://127.0.0.1:{port}"
    rex.port = port
    rex.work = work
    yield rex
    rex.stop()
    api.close()


def where(site) -> dict:
    return requests.get(f"{site.url}/flask/where", timeout=10).json()


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}; got {data!r}"
        data += chunk
    return data


# -- process model (SPEC §8) -------------------------------------------------------------

def test_app_is_imported_in_the_patched_worker_not_the_master(site):
    info = where(site)
    assert info["imported_in"] == info["pid"] != site.pid
    assert info["ppid"] == site.pid
    assert info["patched"] is True  # monkey.patch_all() ran before the import


def test_blocking_sleeps_run_cooperatively_on_one_worker(site):
    url = f"{site.url}/flask/sleep?s=0.5"
    started = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: requests.get(url, timeout=10).status_code, range(20)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 20
    assert elapsed < 2.5, f"20 x sleep(0.5) took {elapsed:.2f}s: the worker is not patched"


def test_pool_of_one_serialises_calls_while_unpooled_calls_overlap(site):
    def burst(prefix: str) -> int:
        requests.delete(f"{site.url}/flask/peak", timeout=10)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: requests.get(f"{site.url}/{prefix}/busy", timeout=10),
                          range(4)))
        return requests.get(f"{site.url}/flask/peak", timeout=10).json()["peak"]

    assert burst("pooled") == 1
    assert burst("flask") > 1


def test_static_files_and_proxied_routes_work_beside_the_apps(site):
    static = requests.get(f"{site.url}/hello.txt", timeout=10)
    assert (static.status_code, static.text) == (200, "static beside wsgi\n")
    assert requests.get(f"{site.url}/api/x?y=1", timeout=10).json()["path"] == "/api/x?y=1"
    assert requests.get(f"{site.url}/flask/links", timeout=10).status_code == 200
    assert requests.get(f"{site.url}/nowhere", timeout=10).status_code == 404


# -- Flask ------------------------------------------------------------------------------------

def test_flask_url_for_uses_the_route_prefix(site):
    links = requests.get(f"{site.url}/flask/links", timeout=10).json()
    assert links == {"self": "/flask/links", "external": f"{site.url}/flask/links"}


def test_trusted_forwarded_proto_sets_the_url_scheme(site):
    links = requests.get(f"{site.url}/flask/links", headers={"X-Forwarded-Proto": "https"},
                         timeout=10).json()
    assert links["external"] == f"https://127.0.0.1:{site.port}/flask/links"


def test_flask_form_post(site):
    resp = requests.post(f"{site.url}/flask/form", data={"name": "rex", "tags": ["a", "b"]},
                         timeout=10)
    assert resp.json() == {"fields": {"name": ["rex"], "tags": ["a", "b"]}}


def test_flask_multipart_upload(site):
    payload = os.urandom(1 << 20)
    resp = requests.post(f"{site.url}/flask/upload", data={"note": "hi"},
                         files={"doc": ("big.bin", payload)}, timeout=10)
    assert resp.json() == {"fields": {"note": "hi"}, "files": {"doc": {
        "filename": "big.bin", "sha256": hashlib.sha256(payload).hexdigest()}}}


def test_flask_chunked_request_body(site):
    parts = [os.urandom(10_000) for _ in range(30)]
    resp = requests.post(f"{site.url}/flask/echo", data=iter(parts), timeout=10)
    body = b"".join(parts)
    assert resp.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                           "content_length": None}


def test_flask_response_streams_as_the_app_yields(site):
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(b"GET /flask/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_until(sock, b"first\n")  # arrives while the app is still blocked
        assert b"Transfer-Encoding: chunked" in head
        requests.post(f"{site.url}/flask/release", timeout=10)
        rest = read_until(sock, b"0\r\n\r\n", head)
    assert b"second\n" in rest


def test_flask_exception_is_a_500_and_the_worker_survives(site):
    before = where(site)["pid"]
    resp = requests.get(f"{site.url}/flask/boom", timeout=10)
    assert resp.status_code == 500
    assert "<html" in resp.text.lower()
    assert where(site)["pid"] == before
    wait_for(lambda: "RuntimeError: boom from the flask test app" in site.output(),
             what="the traceback in the error log")


def test_flask_send_file_goes_through_sendfile(site):
    path = site.work / "big.bin"
    data = bytes(range(256)) * 32768  # 8 MiB: more than a socket buffer
    path.write_bytes(data)
    resp = requests.get(f"{site.url}/flask/file", params={"path": str(path)}, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.content == data
    # os.sendfile never moves the file position; reading the file would have.
    closed_at = requests.get(f"{site.url}/flask/file-closed-at", timeout=10).json()
    assert closed_at[-1] == 0


# -- Django -----------------------------------------------------------------------------------

def test_django_reverse_uses_the_route_prefix(site):
    links = requests.get(f"{site.url}/dj/links/", timeout=10).json()
    assert links == {"self": "/dj/links/", "absolute": f"{site.url}/dj/form/"}


def test_django_form_post(site):
    resp = requests.post(f"{site.url}/dj/form/", data={"name": "rex", "tags": ["a", "b"]},
                         timeout=10)
    assert resp.json() == {"method": "POST", "fields": {"name": ["rex"], "tags": ["a", "b"]}}


def test_django_multipart_upload(site):
    payload = os.urandom(3 << 20)
    resp = requests.post(f"{site.url}/dj/upload/", data={"note": "hi"},
                         files={"doc": ("big.bin", payload)}, timeout=10)
    assert resp.json() == {"fields": {"note": "hi"}, "files": {"doc": {
        "filename": "big.bin", "sha256": hashlib.sha256(payload).hexdigest()}}}


def test_django_streaming_response(site):
    resp = requests.get(f"{site.url}/dj/stream/", timeout=10)
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.text == "".join(f"part {i}\n" for i in range(5))


def test_django_handles_its_own_exceptions(site):
    assert requests.get(f"{site.url}/dj/boom/", timeout=10).status_code == 500
    assert requests.get(f"{site.url}/dj/links/", timeout=10).status_code == 200


# -- PEP 3333 corners, with plain WSGI callables -----------------------------------------------

def test_environ_of_a_plain_request(site):
    env = requests.get(f"{site.url}/raw/environ?a=1&b=%20", headers={"X-Custom": "v"},
                       timeout=10).json()
    assert env["SCRIPT_NAME"] == "/raw"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SERVER_PORT"] == str(site.port)
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_X_CUSTOM"] == "v"
    assert env["url_scheme"] == "http"
    assert "CONTENT_LENGTH" not in env


def test_underscored_header_names_never_reach_the_app(site):
    raw = raw_request(site.port, b"GET /raw/environ HTTP/1.1\r\nHost: x\r\nX-User-Id: real\r\n"
                                 b"X-User_Id: spoofed\r\nConnection: close\r\n\r\n")
    env = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert env["HTTP_X_USER_ID"] == "real"


def test_wsgi_input_lines_and_iteration(site):
    body = b"one\ntwo\nthree\nfour\nfive"
    resp = requests.post(f"{site.url}/raw/lines", data=iter([body[:5], body[5:]]), timeout=10)
    assert resp.json() == {"first": "one\n", "two": ["two\n"],
                           "rest": ["three\n", "four\n", "five"]}


def test_validator_accepts_the_environ_and_the_server_side(site):
    resp = requests.post(f"{site.url}/validated", data=b"payload", timeout=10)
    assert (resp.status_code, resp.text) == (200, "validated payload")
    assert requests.get(f"{site.url}/validated/x?q=1", timeout=10).text == "validated "
    assert "WSGIWarning" not in site.output()


def test_exc_info_before_the_head_replaces_the_status(site):
    resp = requests.get(f"{site.url}/raw/excinfo-early", timeout=10)
    assert (resp.status_code, resp.text) == (503, "replaced")


def test_exc_info_after_the_head_reraises_and_cuts_the_response(site):
    raw = raw_request(site.port, b"GET /raw/excinfo-late HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: the client sees it was cut
    wait_for(lambda: "ValueError: too late" in site.output(), what="the logged traceback")


def test_hop_by_hop_headers_from_the_app_are_stripped(site):
    resp = requests.get(f"{site.url}/raw/hop", timeout=10)
    assert resp.text == "hop"
    assert resp.headers["X-Kept"] == "yes"
    assert resp.headers["Content-Length"] == "3"
    for name in ("Keep-Alive", "Upgrade", "Transfer-Encoding"):
        assert name not in resp.headers


def test_wsgi_errors_go_to_the_error_log(site):
    assert requests.get(f"{site.url}/raw/errors", timeout=10).status_code == 204
    wait_for(lambda: "wsgi:rawapps:app: second line" in site.output(), what="the log lines")
    assert "wsgi:rawapps:app: first line for the log" in site.output()


def test_legacy_write_callable(site):
    assert requests.get(f"{site.url}/raw/write", timeout=10).text == "written then returned"


def test_close_is_called_also_when_iteration_fails(site):
    assert requests.get(f"{site.url}/raw/closing?ok", timeout=10).text == "one two"
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{site.url}/raw/closing?fail", timeout=10).content  # noqa: B018
    closed = wait_for(lambda: requests.get(f"{site.url}/raw/closed", timeout=10).json(),
                      what="close() records")
    assert {"ok", "fail"} <= set(closed)


def test_missing_start_response_is_a_500(site):
    assert requests.get(f"{site.url}/raw/no-start", timeout=10).status_code == 500


def test_file_wrapper_from_a_plain_app(site):
    path = site.work / "small.txt"
    path.write_bytes(b"file wrapper body\n" * 1000)
    resp = requests.get(f"{site.url}/raw/file?{path}", timeout=10)
    assert resp.content == path.read_bytes()
    assert resp.headers["Content-Length"] == str(path.stat().st_size)


# -- connection handling --------------------------------------------------------------------

def test_keep_alive_across_responses_and_head_without_body(site):
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
    try:
        conn.request("GET", "/raw/write")
        first = conn.getresponse()
        assert first.read() == b"written then returned"
        local = conn.sock.getsockname()
        conn.request("HEAD", "/dj/links/")
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        conn.request("GET", "/flask/links")
        assert json.loads(conn.getresponse().read())["self"] == "/flask/links"
        for path in ("/flask/form", "/dj/form/"):  # bodies read by the apps: no close
            conn.request("POST", path, body=b"a=1&b=2",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            assert json.loads(resp.read())["fields"]["b"] == ["2"]
            assert not resp.will_close
        assert conn.sock.getsockname() == local  # one connection for all of them
    finally:
        conn.close()


def test_head_response_has_no_body_on_the_wire(site):
    raw = raw_request(site.port, b"HEAD /flask/links HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""


def test_unread_request_body_closes_the_connection(site):
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(b"POST /raw/ignore-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                     b"\r\n" + b"x" * 1000)
        data = read_until(sock, b"ignored")
        assert b"Connection: close" in data
        sock.settimeout(5)
        assert sock.recv(100) == b""  # and the server closed it


def test_http10_stream_is_delimited_by_close(site):
    raw = raw_request(site.port, b"GET /dj/stream/ HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"".join(b"part %d\n" % i for i in range(5))


def test_large_chunked_body_with_100_continue(site):
    body = os.urandom(300_000)
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(b"POST /raw/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
        sent = threading.Thread(target=sock.sendall, args=(
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),))
        sent.start()
        data = read_until(sock, b"}")
        sent.join()
    assert json.loads(data.split(b"\r\n\r\n")[-1]) == {
        "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


# -- boot ---------------------------------------------------------------------------------------

def test_import_error_fails_the_start_with_the_route_named(rex):
    port = free_port()
    rex.write(site_config(port, {"/": "wsgi:nosuchpkg.app:application"}))
    result = rex.cli("start", "-f", "-c", str(rex.config), timeout=30)
    assert result.returncode == 1
    assert ("wsgi:nosuchpkg.app:application: ModuleNotFoundError: "
            "No module named 'nosuchpkg'") in result.stderr
    assert not port_open(port)


def test_config_directory_is_on_sys_path(rex):
    # Not the directory Rex starts in (``python -m`` puts that on sys.path anyway).
    rex.config = rex.workdir / "conf" / "rex.config.yaml"
    rex.config.parent.mkdir()
    (rex.config.parent / "beside_config.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [environ['SCRIPT_NAME'].encode() + b'|' + environ['PATH_INFO'].encode()]\n")
    port = rex.serve({"/deep/mount": "wsgi:beside_config:app"})
    assert requests.get(f"http://127.0.0.1:{port}/deep/mount/a/b", timeout=10).text == \
        "/deep/mount|/a/b"
