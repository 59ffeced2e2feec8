"""Metrics: the pure counting and text format, then known traffic through a real 2-worker master."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from conftest import free_port, rss_kb, send_request, site_config, wait_for

from rex_workers.config.loader import load_config
from rex_workers.master.exposition import Exposition, Retired, sum_counters
from rex_workers.master.procstat import parse_boot_time, parse_max_fds, parse_stat
from rex_workers.shared.metrics import BUFFERING, REQUEST_WIDTH, Layout, MetricsTable, Recorder

CONFIG = """\
server:
  instances:
    - port: 8000
      routes:
        - {path: /api, destination: "http://127.0.0.1:3000", methods: [GET]}
        - {path: /api, destination: "http://127.0.0.1:3001", methods: [POST]}
        - {path: /app, destination: "wsgi:app:application"}
    - port: 8001
      routes: [{path: /, destination: [localhost:4000, localhost:4001]}]
upstream: [localhost:5000]
"""


def layout(tmp_path) -> Layout:
    path = tmp_path / "rex.config.yaml"
    path.write_text(CONFIG)
    return Layout(load_config(str(path)))


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from Prometheus text; checks HELP/TYPE come first."""
    found, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            family = re.sub(r"(_bucket|_sum|_count)$", "", name.split("{")[0])
            assert family in typed or name.split("{")[0] in typed, line
            found[name] = float(value)
    return found


def total(found: dict[str, float], prefix: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in found.items()
               if k.split("{")[0] == prefix and all(w in k for w in want))


def admin_get(port: int, path: str):
    return send_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_layout_rows_follow_labels_not_file_positions(tmp_path):
    lay = layout(tmp_path)
    # Two /api routes (by method) share one row; the global pool gets a row per site.
    assert lay.requests == [("-", "-"), ("0", "-"), ("0", "/api"), ("0", "/app"),
                            ("0", "upstream"), ("1", "-"), ("1", "/"), ("1", "upstream")]
    assert [(u.site, u.route, u.upstream.key) for u in lay.upstreams] == [
        ("0", "/api", "http://127.0.0.1:3000"), ("0", "/api", "http://127.0.0.1:3001"),
        ("1", "/", "http://localhost:4000"), ("1", "/", "http://localhost:4001"),
        ("-", "upstream", "http://localhost:5000")]
    assert lay.listeners == [("0.0.0.0", 8000), ("0.0.0.0", 8001)]
    assert lay.request_row("9", "/nowhere") == 0  # unknown: the "-" row, never an error
    assert lay.buffering_base == lay.gauge_base + 5 * len(lay.upstreams)
    assert lay.size == lay.buffering_base + len(BUFFERING)  # then the buffering block


def test_counts_render_as_prometheus_text(tmp_path):
    lay = layout(tmp_path)
    rec = Recorder(lay)
    rec.request("0", "/api", 200, 100, 0.003)
    rec.request("0", "/api", 200, 50, 0.2)
    rec.request("0", "/api", 418, 0, 7.0)  # no column of its own: counted as 4xx
    rec.request("1", "-", 0, 0, 100.0)  # no status at all (client gone): "other", +Inf
    rec.request("0", "/api", 200, 0, 0.001, h2=True)
    rec.upstream_failed(lay.upstream_row("-", "upstream", "http://localhost:5000"))
    out = Exposition()
    out.add_counters(sum_counters(Retired(), [(lay, rec.values)]))
    out.add("rex_site_info", 1, (("site", "0"), ("server_names", 'we"ird\\')))
    found = samples(out.text())
    api = 'site="0",route="/api"'
    assert found[f'rex_requests_total{{{api},code="200"}}'] == 3
    assert found[f'rex_requests_by_protocol_total{{{api},protocol="HTTP/1.x"}}'] == 3
    assert found[f'rex_requests_by_protocol_total{{{api},protocol="HTTP/2"}}'] == 1
    assert 'rex_requests_by_protocol_total{site="1",route="-",protocol="HTTP/2"}' not in found
    assert found[f'rex_requests_total{{{api},code="4xx"}}'] == 1
    assert found['rex_requests_total{site="1",route="-",code="other"}'] == 1
    assert found[f'rex_request_duration_seconds_bucket{{{api},le="0.005"}}'] == 2
    assert found[f'rex_request_duration_seconds_bucket{{{api},le="0.25"}}'] == 3  # cumulative
    assert found[f'rex_request_duration_seconds_bucket{{{api},le="10"}}'] == 4
    assert found[f'rex_request_duration_seconds_bucket{{{api},le="+Inf"}}'] == 4
    assert found[f'rex_request_duration_seconds_count{{{api}}}'] == 4
    assert abs(found[f'rex_request_duration_seconds_sum{{{api}}}'] - 7.204) < 1e-9
    assert found[f'rex_response_body_bytes_total{{{api}}}'] == 150
    assert found['rex_upstream_failures_total{site="-",route="upstream",'
                 'upstream="http://localhost:5000"}'] == 1
    assert 'server_names="we\\"ird\\\\"' in out.text()  # label values escaped
    assert not any("code=\"500\"" in k for k in found)  # zero counters are not listed


def test_shared_table_round_trip_and_folding_keep_counters(tmp_path):
    lay = layout(tmp_path)
    table = MetricsTable(lay, slots=4)
    rec = Recorder(lay)
    rec.request("0", "/app", 200, 10, 0.01)
    table.publish(2, rec.values)
    assert table.read(2) == rec.values
    assert not any(table.read(1))  # other slots untouched
    retired = Retired()
    retired.fold(lay, table.read(2))
    table.reset(2)  # the slot's next worker starts from zero...
    rec2 = Recorder(lay)
    rec2.request("0", "/app", 200, 10, 0.01)
    table.publish(2, rec2.values)
    totals = sum_counters(retired, [(lay, table.read(2))])  # ...and the total still grows
    assert totals[("rex_requests_total", (("site", "0"), ("route", "/app"), ("code", "200")))] == 2
    assert len(rec.values) == lay.size and REQUEST_WIDTH > 40
    table.close()


def test_known_traffic_over_two_workers_adds_up_exactly(rex, upstream):
    up = upstream()
    port, admin = free_port(), free_port()
    dead = free_port()  # nothing listens there
    rex.write(site_config(port, {"/api": up.url, "/dead": f"http://127.0.0.1:{dead}"}, f"""\
        workers: 2
        reuse_port: true
        logging: {{access: off}}
        admin: {{port: {admin}}}
    """))
    rex.start(ports=(port,))
    ok, missing, failing = 30, 8, 3
    for path, count in (("/api/x", ok), ("/nope", missing), ("/dead", failing)):
        for _ in range(count):  # a new connection each: the kernel spreads them over both
            request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            send_request(port, request.encode())
    n = ok + missing + failing

    def scrape() -> dict[str, float]:
        reply = admin_get(admin, "/metrics")
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        return samples(reply.body.decode())

    found = wait_for(lambda: (m := scrape()) and total(m, "rex_requests_total") == n and m,
                     what=f"{n} requests counted")
    workers = json.loads(admin_get(admin, "/status").body)["workers"]
    by_worker = [w["requests"] for w in workers]
    assert sum(by_worker) == n and min(by_worker) > 0, by_worker  # both workers counted some
    assert total(found, "rex_requests_total", route="/api", code="200") == ok
    assert total(found, "rex_requests_total", route="-", code="404") == missing
    assert total(found, "rex_requests_total", route="/dead", code="502") == failing
    assert total(found, "rex_request_duration_seconds_count") == n
    assert total(found, "rex_upstream_failures_total", route="/dead") == failing
    assert total(found, "rex_connections_total") == n + 1  # + start()'s look at the port
    assert total(found, "rex_received_bytes_total") >= n * 40  # each request head, at least
    assert total(found, "rex_sent_bytes_total") > total(found, "rex_response_body_bytes_total")
    assert found["rex_workers{state=\"ready\"}"] == 2
    assert found["rex_ready"] == 1 and found["rex_worker_restarts_total"] == 0

    # A worker's counts outlive it: the master folds them in when it reaps it.
    victim = workers[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: scrape().get("rex_worker_restarts_total") == 1, what="the restart counted")
    after = scrape()
    assert total(after, "rex_requests_total") == n
    assert total(after, "rex_upstream_failures_total") == failing


def test_requests_are_counted_by_the_protocol_they_came_over(rex, upstream):
    """HTTP/2 with prior knowledge (h2c) and HTTP/1.1 to one instance: the same series
    as before, and each request in ``rex_requests_by_protocol_total`` by protocol."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2", reason="httpx[http2] is a test dependency")
    up = upstream()
    port, admin = free_port(), free_port()
    rex.write(site_config(port, {"/api": up.url}, f"""\
        logging: {{access: off}}
        admin: {{port: {admin}}}
    """, instance="http2: cleartext"))
    rex.start(ports=(port,))
    with httpx.Client(http1=False, http2=True, timeout=5) as client:
        replies = [client.get(f"http://127.0.0.1:{port}/api/{n}") for n in range(3)]
        replies.append(client.get(f"http://127.0.0.1:{port}/nope"))
    assert [r.http_version for r in replies] == ["HTTP/2"] * 4
    assert [r.status_code for r in replies] == [200, 200, 200, 404]
    for _ in range(2):
        assert send_request(port, b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n").status == 200

    found = wait_for(lambda: (m := samples(admin_get(admin, "/metrics").body.decode()))
                     and total(m, "rex_requests_total") == 6 and m, what="6 requests counted")
    api = 'site="0",route="/api"'
    assert found[f'rex_requests_by_protocol_total{{{api},protocol="HTTP/2"}}'] == 3
    assert found[f'rex_requests_by_protocol_total{{{api},protocol="HTTP/1.x"}}'] == 2
    assert found['rex_requests_by_protocol_total{site="0",route="-",protocol="HTTP/2"}'] == 1
    assert found[f'rex_requests_total{{{api},code="200"}}'] == 5  # its labels as before
    assert total(found, "rex_requests_by_protocol_total") == total(found, "rex_requests_total")


# -- process_* (procstat.py): the kernel's view of the master and each worker ----------------

STAT = ("4711 (rex: worker 1 [gen 2]) S 4700 4700 4700 0 -1 4194624 9000 0 0 0 "
        "250 50 0 0 20 0 1 0 123400 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 "
        "16781312 16386 0 0 0 17 1 0 0 0 0 0 1 1 1 1 1 1 1 0\n")
LIMITS = ("Limit                     Soft Limit           Hard Limit           Units     \n"
          "Max cpu time              unlimited            unlimited            seconds   \n"
          "Max open files            1024                 524288               files     \n")


def test_proc_files_parse_into_the_client_libraries_units():
    # A command name with spaces and brackets, as the process titles make them.
    cpu, rss, vsize, start = parse_stat(STAT, ticks=100, page=4096, boot=1_700_000_000.0)
    assert cpu == 3.0  # (utime 250 + stime 50) ticks at 100 per second
    assert rss == 2048 * 4096 and vsize == 987654321
    assert start == 1_700_000_000.0 + 1234.0  # boot time + starttime ticks
    assert parse_max_fds(LIMITS) == 1024
    assert parse_max_fds(LIMITS.replace("1024 ", "unlimited ")) is None
    assert parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n") == 1_700_000_000.0


def process_labels(key: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', key))


def test_process_metrics_of_the_master_and_each_worker(rex, upstream):
    up = upstream()
    port, admin = free_port(), free_port()
    rex.write(site_config(port, {"/": up.url}, f"workers: 2\nadmin: {{port: {admin}}}\n"))
    rex.start(ports=(port,))
    workers = wait_for(lambda: len(w := rex.status()["workers"]) == 2 and w, what="two workers")
    found = samples(admin_get(admin, "/metrics").body.decode())
    by_process: dict[str, dict[str, float]] = {}
    for key, value in found.items():
        if key.startswith("process_"):
            labels = process_labels(key)
            who = labels["process"] if labels["process"] == "master" else \
                f"worker {labels['worker']} gen {labels['generation']}"
            by_process.setdefault(who, {})[key.split("{")[0]] = value
            pid = int(labels["pid"])
            assert pid == rex.pid if who == "master" else pid in {w["pid"] for w in workers}
    assert set(by_process) == {"master", "worker 1 gen 1", "worker 2 gen 1"}
    families = {"process_cpu_seconds_total", "process_resident_memory_bytes",
                "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                "process_start_time_seconds"}
    for who, values in by_process.items():
        assert set(values) == families, who
        pid = rex.pid if who == "master" else next(
            w["pid"] for w in workers if who.startswith(f"worker {w['worker']} "))
        assert abs(values["process_resident_memory_bytes"] - rss_kb(pid) * 1024) < 8 << 20
        assert values["process_open_fds"] == pytest.approx(len(os.listdir(f"/proc/{pid}/fd")),
                                                           abs=2)
        assert values["process_max_fds"] >= values["process_open_fds"] > 3
        assert values["process_virtual_memory_bytes"] >= values["process_resident_memory_bytes"]
        assert 0 <= values["process_cpu_seconds_total"] < 60
    # A worker's CPU counts from its fork: booting (importing gevent) takes some.
    assert sum(v["process_cpu_seconds_total"] for w, v in by_process.items() if w != "master") > 0
    started = found["rex_start_time_seconds"]
    assert abs(by_process["master"]["process_start_time_seconds"] - started) < 2
    assert started - 1 <= by_process["worker 1 gen 1"]["process_start_time_seconds"] <= \
        time.time()
