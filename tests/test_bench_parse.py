"""The benchmark's pure parts: wrk output parsing, medians, ratios, verdicts, configs.

Performance itself is never tested; these check that the bench reads wrk
correctly and judges its figures as docs/bench.md says.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `bench/` is a tool in the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import configs, report, routes  # noqa: E402
from bench.scenarios import P99_TARGET, SCENARIOS, Target  # noqa: E402
from bench.wrk import DONE_SCRIPT, MARKER, WrkOutputError, WrkResult, parse, parse_text  # noqa: E402

# Real wrk 4.1.0 output (--latency), from nginx on loopback.
PLAIN = """\
Running 3s test @ http://127.0.0.1:18202/13b.bin
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   738.26us  287.12us   5.33ms   67.52%
    Req/Sec    79.13k     4.88k   83.61k    83.33%
  Latency Distribution
     50%  729.00us
     75%    0.92ms
     90%    1.06ms
     99%    1.41ms
  236303 requests in 3.00s, 59.27MB read
Requests/sec:  78702.87
Transfer/sec:     19.74MB
"""

LARGE = """\
Running 3s test @ http://127.0.0.1:18202/10m.bin
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   211.81ms  104.59ms 486.29ms   77.24%
    Req/Sec    73.35     31.56   161.00     74.19%
  Latency Distribution
     50%  204.88ms
     75%  232.53ms
     90%  407.65ms
     99%     1.02s
  227 requests in 3.10s, 2.29GB read
  Socket errors: connect 0, read 12, write 1, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:     73.22
Transfer/sec:    756.43MB
"""

WITH_SCRIPT = LARGE + (
    MARKER + '{"duration_us": 3100171, "requests": 227, "bytes": 2458982255, "connect": 0, '
    '"read": 0, "write": 0, "timeout": 0, "status": 0, "p50_us": 204880, "p99_us": 477972}\n')


def test_plain_summary_with_units():
    result = parse(PLAIN)
    assert result.requests == 236303
    assert result.duration == pytest.approx(3.0)
    assert result.bytes == round(59.27 * 2**20)  # wrk's MB is binary
    assert result.p50_ms == pytest.approx(0.729)
    assert result.p99_ms == pytest.approx(1.41)
    assert result.error_count == 0
    assert result.req_per_s == pytest.approx(236303 / 3.0)


def test_errors_and_second_units():
    result = parse_text(LARGE)
    assert result.errors == {"connect": 0, "read": 12, "write": 1, "timeout": 3, "status": 5}
    assert result.error_count == 21
    assert result.p99_ms == pytest.approx(1020.0)
    assert result.bytes == round(2.29 * 2**30)
    assert result.mb_per_s == pytest.approx(2.29 * 2**30 / 3.10 / 1e6)


def test_script_line_wins_over_the_rounded_text():
    result = parse(WITH_SCRIPT)
    assert result.bytes == 2458982255
    assert result.duration == pytest.approx(3.100171)
    assert result.p99_ms == pytest.approx(477.972)
    assert result.error_count == 0  # the exact counters, not the text's


@pytest.mark.parametrize("output", [
    "",  # wrk printed "unable to connect" on stderr and nothing here
    PLAIN.replace("  Latency Distribution\n", "").replace("     50%  729.00us\n", ""),
    PLAIN.replace("236303 requests in", "many requests in"),
    MARKER + '{"requests": 1}',
])
def test_unreadable_output_is_an_error(output):
    with pytest.raises(WrkOutputError):
        parse(output)


def test_done_script_prints_the_marker_and_every_field():
    assert f"'{MARKER}{{" in DONE_SCRIPT
    for name in ("duration_us", "requests", "bytes", "status", "p50_us", "p99_us"):
        assert f'"{name}"' in DONE_SCRIPT
    assert "%d" not in DONE_SCRIPT  # byte counts overflow 32-bit ints


def run(rps: float, p99: float = 1.0, errors: int = 0, mb: float = 0.0) -> WrkResult:
    """A one-second run with the given request rate, p99 and failures."""
    return WrkResult(requests=round(rps), duration=1.0, bytes=round(mb * 1e6), p50_ms=p99 / 2,
                     p99_ms=p99, errors={"status": errors})


def samples_for(key: str, nginx: list[WrkResult], rex: list[WrkResult]) -> dict:
    return {key: {"nginx": nginx, "rex": rex}}


def rows_by_name(samples: dict) -> dict[str, report.Row]:
    return {r.name: r for r in report.scenario_rows(samples, SCENARIOS, "nginx", "rex")}


def test_medians_ratio_and_verdicts():
    samples = samples_for("proxy_13b", [run(100, 1.0), run(300, 3.0), run(200, 2.0)],
                          [run(90, 5.0), run(70, 3.0), run(500, 4.0)])
    rows = rows_by_name(samples)
    rps, p99 = rows["proxied 13 B"], rows["proxied 13 B p99"]
    assert (rps.reference, rps.contender) == (200, 90)
    assert rps.ratio == pytest.approx(0.45)
    assert rps.result == report.PASS  # >= 0.45, bound included
    assert (p99.reference, p99.contender) == (2.0, 4.0)
    assert p99.ratio == pytest.approx(2.0)
    assert p99.result == report.PASS  # <= 2x, bound included


def test_failed_requests_fail_the_row_however_fast():
    rows = rows_by_name(samples_for("proxy_13b", [run(100)], [run(1000, errors=3)]))
    row = rows["proxied 13 B"]
    assert row.ratio == pytest.approx(10.0)
    assert row.result == report.FAIL
    assert "rex: 3 failed requests" in row.note


def test_missing_contender_is_not_a_pass():
    rows = rows_by_name(samples_for("static_10m", [run(1, mb=900.0)], []))
    row = rows["static 10 MiB"]
    assert row.contender is None and row.ratio is None
    assert row.result == report.MISSING
    assert rows["proxied 64 KiB"].result == report.MISSING  # a target, nothing measured
    assert report.failed(list(rows.values()))


def test_throughput_rows_use_megabytes():
    rows = rows_by_name(samples_for("proxy_10m", [run(1, mb=800.0)], [run(1, mb=840.0)]))
    row = rows["proxied 10 MiB"]
    assert row.unit == "MB/s"
    assert row.ratio == pytest.approx(1.05)
    assert row.result == report.PASS


def test_absolute_target_judges_the_contender_alone():
    target = Target("<=", 150.0, "MB")
    assert report.absolute_row("idle", "RSS MB", 16.0, 149.0, target).result == report.PASS
    assert report.absolute_row("idle", "RSS MB", 16.0, 151.0, target).result == report.FAIL
    assert report.absolute_row("idle", "RSS MB", 16.0, 90.0, target,
                               errors=5).result == report.FAIL
    assert str(target) == "<= 150 MB" and str(P99_TARGET) == "<= 2.00x"


def test_tables_show_every_row_and_the_notes():
    samples = samples_for("proxy_13b", [run(100)], [run(50, errors=1)])
    text = report.summary_table(report.scenario_rows(samples, SCENARIOS, "nginx", "rex"),
                                "nginx", "rex")
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["measure", "unit", "nginx", "rex"]
    assert any(line.startswith("proxied 13 B ") and line.endswith("FAIL") for line in lines)
    assert "rex: 1 failed requests" in text
    latency = report.latency_table(samples, SCENARIOS, ["nginx", "rex"])
    assert "0.5 / 1" in latency
    json.dumps(report.runs_json(samples))  # plain data all the way down


def test_route_probes_hit_the_table_they_were_made_for():
    for count in (10, 1000):
        made = routes.patterns(count)
        assert len(made) == count and made[-1] == "/*"
        svc = {int(p.split("/")[1][3:]) for p in routes.probe_paths(count)
               if p.startswith("/svc")}
        assert max(svc) < count - 1  # never a route the other table lacks


def test_rex_configs_are_what_rex_accepts(tmp_path):
    from rex_workers.config.loader import load_config

    proxy_path, static_path = tmp_path / "proxy.yaml", tmp_path / "static.yaml"
    proxy_path.write_text(configs.rex_proxy(18001, 18003))
    static_path.write_text(configs.rex_static(18002, str(tmp_path)))
    proxy, static = load_config(str(proxy_path)), load_config(str(static_path))
    for config in (proxy, static):
        assert config.workers == 1 and config.logging.access is None
        assert [i.host for i in config.instances] == ["127.0.0.1"]
    assert proxy.instances[0].routes[0].upstreams[0].port == 18003
    assert proxy.instances[0].public is None
    assert static.instances[0].public == str(tmp_path) and static.instances[0].port == 18002


def test_the_compression_scenario_compares_like_with_like(tmp_path):
    from bench.scenarios import GZIP_LEVEL, GZIP_TYPES
    from bench.wrk import command
    from rex_workers.config.loader import load_config

    path = tmp_path / "gzip.yaml"
    path.write_text(configs.rex_gzip_proxy(18001, 18003, GZIP_LEVEL, GZIP_TYPES))
    compress = load_config(str(path)).instances[0].compress
    assert compress.algorithms == ("gzip",) and compress.gzip_level == GZIP_LEVEL
    assert compress.types == GZIP_TYPES
    nginx = configs.nginx_gzip_proxy("/tmp/x", "gzip", 18002, 18003, GZIP_LEVEL, GZIP_TYPES)
    assert f"gzip_comp_level {GZIP_LEVEL};" in nginx and "gzip_types application/json;" in nginx
    (scenario,) = [s for s in SCENARIOS if s.site == "gzip"]
    argv = command("wrk", "http://x/", connections=1, threads=1, duration=1, script="d.lua",
                   headers=scenario.headers)
    assert "--header=Accept-Encoding: gzip" in argv


@pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()),
                    reason="nginx not installed")
def test_nginx_configs_pass_nginx_t(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    www = tmp_path / "www"
    www.mkdir()
    texts = {"backend": configs.nginx_backend(str(tmp_path), "backend", 18001, str(www)),
             "proxy": configs.nginx_proxy(str(tmp_path), "proxy", 18002, 18001),
             "gzip": configs.nginx_gzip_proxy(str(tmp_path), "gzip", 18004, 18001, 5,
                                              ("application/json",)),
             "static": configs.nginx_static(str(tmp_path), "static", 18003, str(www))}
    for name, text in texts.items():
        (tmp_path / f"{name}.conf").write_text(text)
        Path(configs.nginx_temp_dir(str(tmp_path), name)).mkdir()
        argv = configs.nginx_argv(nginx, str(tmp_path), name)
        check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr


def test_wsgi_row_is_rex_over_gunicorn_and_rex_own_p99():
    from bench import wsgirow

    figures = {"gunicorn": [run(100, 300.0), run(120, 150.0)],
               "rex": [run(300, 9.0), run(280, 12.0)]}
    throughput, p99 = wsgirow.rows(figures, "rex")
    assert (throughput.reference, throughput.contender) == (110, 290)
    assert throughput.ratio == pytest.approx(290 / 110)
    assert throughput.result == report.PASS  # >= 2.5x
    assert "gunicorn" in throughput.note
    assert (p99.reference, p99.contender, p99.result) == (225.0, 10.5, report.PASS)  # <= 20 ms
    slow = wsgirow.rows({"gunicorn": [run(100, 300.0)], "rex": [run(200, 25.0)]}, "rex")
    assert [row.result for row in slow] == [report.FAIL, report.FAIL]
    (skipped,) = wsgirow.skipped_rows("skipped: gunicorn is not installed")
    assert not report.failed([skipped])  # an optional tool missing fails nothing


def test_wsgi_row_alternates_like_the_rounds():
    from bench import wsgirow

    order = []
    figures = wsgirow.alternate([type("S", (), {"name": n}) for n in ("a", "b")], 3,
                                lambda s: order.append(s.name) or s.name)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert figures == {"a": ["a"] * 3, "b": ["b"] * 3}


def test_rex_wsgi_config_is_what_rex_accepts(tmp_path):
    from bench.scenarios import WSGI_APP
    from rex_workers.config.loader import load_config

    path = tmp_path / "wsgi.yaml"
    path.write_text(configs.rex_wsgi(18004, WSGI_APP, str(ROOT)))
    config = load_config(str(path))
    assert config.workers == 1 and config.pythonpath == (str(ROOT),)
    assert config.instances[0].routes[0].wsgi == WSGI_APP
    path.write_text(configs.rex_wsgi(18004, WSGI_APP, str(ROOT), as_root=True))
    assert load_config(str(path)).user == "root"
    argv = configs.gunicorn_argv("python", 18005, WSGI_APP)
    assert argv[-1] == WSGI_APP and "127.0.0.1:18005" in argv and argv[3:5] == ["-k", "gevent"]


# Real h2load 1.52 output (count mode), from nginx over TLS; the progress lines cut.
H2LOAD = """\
starting benchmark...
spawning thread #0: 4 total client(s). 200 total requests
TLS Protocol: TLSv1.2
Cipher: ECDHE-RSA-AES128-GCM-SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
progress: 10% done

finished in 139.27ms, 1436.05 req/s, 1.58MB/s
requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 200 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 224.80KB (230196) total, 21.09KB (21600) headers (space savings 39.66%)
"""


def test_h2load_summary_and_failed_streams():
    from bench.h2load import parse as parse_h2

    result = parse_h2(H2LOAD)
    assert (result.requests, result.succeeded, result.failed) == (200, 200, 0)
    assert result.protocol == "h2" and result.duration == pytest.approx(0.13927)
    assert result.req_per_s == pytest.approx(200 / 0.13927)
    # A reset stream and a 502: each a failed stream, and neither counts toward req/s.
    worse = (H2LOAD.replace("200 succeeded, 0 failed, 0 errored", "199 succeeded, 1 failed, "
                            "1 errored")
             .replace("200 2xx, 0 3xx, 0 4xx, 0 5xx", "198 2xx, 0 3xx, 0 4xx, 1 5xx"))
    assert parse_h2(worse).failed == 2 and parse_h2(worse).succeeded == 198


def test_h2load_output_without_a_summary_is_an_error():
    from bench.h2load import H2loadOutputError
    from bench.h2load import parse as parse_h2

    with pytest.raises(H2loadOutputError, match="connect"):
        parse_h2("starting benchmark...\nNo protocol negotiated / could not connect\n")


def test_a_failed_stream_fails_the_h2_row_however_fast():
    from bench.h2 import _rows
    from bench.h2load import H2Result

    fast = H2Result(requests=100, succeeded=99, failed=1, duration=0.001, protocol="h2")
    slow = H2Result(requests=100, succeeded=100, failed=0, duration=1.0, protocol="h2")
    runs = {"h2_static_1k": {"nginx": [slow], "rex": [fast]}, "h2_proxy_13b": {}}
    static, proxied = _rows(runs, ("nginx", "rex"))
    assert static.ratio > 1 and static.result == report.FAIL
    assert "failed streams: nginx 0, rex 1" in static.note
    assert proxied.result == report.MISSING


def test_rex_h2_configs_are_tls_instances_with_http2(tmp_path):
    from rex_workers.config.loader import load_config

    path = tmp_path / "h2.yaml"
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("")  # the loader checks they exist; rex check reads them
    path.write_text(configs.rex_h2(18001, "c.pem", "k.pem", root=str(tmp_path)))
    (instance,) = load_config(str(path)).instances
    assert instance.tls is not None and instance.http2 is True
    assert instance.public == str(tmp_path)


@pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())
                    or not shutil.which("openssl"), reason="nginx or openssl not installed")
def test_nginx_h2_configs_pass_nginx_t(tmp_path):
    from bench.h2 import certificate

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cert, key = certificate(str(tmp_path))
    texts = {"h2-proxy": configs.nginx_h2(str(tmp_path), "h2-proxy", 18002, cert, key,
                                          backend_port=18001),
             "h2-static": configs.nginx_h2(str(tmp_path), "h2-static", 18003, cert, key,
                                           root=str(tmp_path))}
    for name, text in texts.items():
        assert "ssl http2;" in text
        (tmp_path / f"{name}.conf").write_text(text)
        Path(configs.nginx_temp_dir(str(tmp_path), name)).mkdir()
        argv = configs.nginx_argv(nginx, str(tmp_path), name)
        check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
