"""The access log: one line per request, combined or JSON, with upstream and timings."""

from __future__ import annotations

import json
import re
import socket

from conftest import free_port, read_reply, send_request, wait_for

COMBINED = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)" upstream=(?P<upstream>\S+) rt=(?P<rt>[\d.]+) urt=(?P<urt>[\d.]+|-) '
    r'rid=(?P<rid>[0-9a-f]{12}-[0-9a-f]+)$')


def start(rex, upstream, fmt: str) -> tuple[int, object, int]:
    api, dead = upstream(), free_port()
    port = rex.serve({"/api": api.url, "/dead": f"http://127.0.0.1:{dead}"}, f"""\
        logging: {{access: {rex.workdir}/access.log, format: {fmt},
                   error: {rex.workdir}/error.log}}
        workers: 1
    """)
    return port, api, dead


def send(port: int, data: bytes) -> int:
    return send_request(port, data).status


def log_lines(rex, count: int) -> list[str]:
    path = rex.workdir / "access.log"
    return wait_for(lambda: path.exists() and len(lines := path.read_text().splitlines()) >= count
                    and lines, what=f"{count} access log lines")


def test_combined_format(rex, upstream):
    port, api, dead = start(rex, upstream, "combined")
    assert send(port, b"GET /api/x?q=1 HTTP/1.1\r\nHost: a\r\nReferer: http://r/\r\n"
                      b"User-Agent: probe/1.0\r\n\r\n") == 200
    assert send(port, b"GET /dead HTTP/1.1\r\nHost: a\r\n\r\n") == 502
    assert send(port, b"GET /api HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n") == 400
    ok, failed, bad = log_lines(rex, 3)
    m = COMBINED.match(ok)
    assert m, ok
    assert m["request"] == "GET /api/x?q=1 HTTP/1.1" and m["status"] == "200"
    assert int(m["bytes"]) > 0 and m["referer"] == "http://r/" and m["agent"] == "probe/1.0"
    assert m["upstream"] == f"http://127.0.0.1:{api.port}" and m["urt"] != "-"
    assert float(m["urt"]) <= float(m["rt"])
    m = COMBINED.match(failed)
    assert m and m["status"] == "502" and m["upstream"] == f"http://127.0.0.1:{dead}", failed
    assert '"-" 400 0' in bad  # never parsed: logged with what is known
    errors = (rex.workdir / "error.log").read_text()
    assert f"upstream http://127.0.0.1:{dead}" in errors and "refused" in errors.lower()


def test_json_format(rex, upstream):
    port, api, _ = start(rex, upstream, "json")
    assert send(port, b"POST /api/j HTTP/1.1\r\nHost: h.example\r\nContent-Length: 2\r\n\r\n"
                      b"hi") == 200
    (line,) = log_lines(rex, 1)
    entry = json.loads(line)
    assert entry["method"] == "POST" and entry["target"] == "/api/j"
    assert entry["status"] == 200 and entry["bytes"] > 0 and entry["host"] == "h.example"
    assert entry["upstream"] == f"http://127.0.0.1:{api.port}"
    assert 0 <= entry["upstream_time"] <= entry["request_time"]
    assert entry["remote"] == "127.0.0.1"


def test_a_failing_access_log_is_reported_once_and_costs_only_lines(tmp_path):
    from rex_workers.config.model import Logging
    from rex_workers.serve.accesslog import Log

    errors = tmp_path / "error.log"
    log = Log(Logging(access="/dev/full", error=str(errors)), "[worker 1] ")
    for _ in range(3):
        log.access_raw("127.0.0.1", 400)
    lines = errors.read_text().splitlines()
    assert log.dropped == 3 and len(lines) == 1  # one report, not one per lost line
    assert "[error] [worker 1] access log /dev/full: No space left on device" in lines[0]


def test_log_level_leaves_out_lower_lines(tmp_path):
    from rex_workers.config.model import Logging
    from rex_workers.serve.accesslog import Log

    errors = tmp_path / "error.log"
    log = Log(Logging(access=None, error=str(errors), level="warning"))
    log.info("started")
    log.error("upstream down")
    assert errors.read_text().count("\n") == 1 and "upstream down" in errors.read_text()
    quiet = Log(Logging(access=None, error=str(errors), level="critical"))
    quiet.error("not written")
    assert "not written" not in errors.read_text()


def half_closed(port: int, data: bytes) -> int:
    """Send ``data``, close our write side, and read the answer Rex still owes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_reply(s.makefile("rb")).status


def test_a_client_that_half_closes_mid_request_is_answered_and_logged_400(rex, upstream):
    port, api, _ = start(rex, upstream, "combined")
    assert half_closed(port, b"GET /api/a HTTP/1.1\r\nHost: a\r\nX-A: b") == 400
    assert half_closed(port, b"POST /api/b HTTP/1.1\r\nHost: a\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n3\r\nab") == 400
    head, body = log_lines(rex, 2)
    assert '"-" 400 ' in head  # no request to name: the head never ended
    assert COMBINED.match(body)["request"] == "POST /api/b HTTP/1.1"
    assert COMBINED.match(body)["status"] == "400"
    assert api.requests == []  # buffered: nothing of the broken body went upstream
