"""The HTTP/2 rows (issue 21): h2load against nginx and Rex over TLS, one worker each.

Its own servers beside the wrk rows' ones (TLS on, HTTP/2 by ALPN: nginx
``listen ... ssl http2``, Rex's default on a TLS instance), in front of the
same backend and files; a self-signed certificate made with ``openssl`` in the
lab's directory. Rounds alternate the systems like the wrk rounds. A row
passes when Rex/nginx meets its target and no stream failed; a run that did
not negotiate h2 is a problem, never a figure.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import subprocess
from collections.abc import Callable

from . import report
from .h2load import H2loadOutputError, H2Result, command, parse
from .lab import Lab, System
from .scenarios import H2_REQUESTS_PER_SECOND, H2_SCENARIOS, H2_STREAMS, Scenario

Runs = dict[str, dict[str, list[H2Result]]]  # scenario key -> system name -> one per round


def certificate(directory: str) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1: (cert path, key path)."""
    cert, key = os.path.join(directory, "h2-cert.pem"), os.path.join(directory, "h2-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o644)  # nginx's unprivileged workers never read it, but Rex may drop root
    return cert, key


def verify(lab: Lab, system: System) -> None:
    """Fetch each scenario's URL once over TLS; a wrong answer takes it out for ``system``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own throwaway certificate
    for scenario in H2_SCENARIOS:
        if scenario.site not in system.ports:
            continue  # did not start: reported once, in ``failed``
        conn = http.client.HTTPSConnection("127.0.0.1", system.ports[scenario.site],
                                           timeout=30, context=context)
        try:
            conn.request("GET", scenario.path)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            system.broken[scenario.key] = f"GET {scenario.path} over TLS failed: {exc}"
            continue
        finally:
            conn.close()
        if response.status != 200:
            system.broken[scenario.key] = f"GET {scenario.path} answered {response.status}"
        elif hashlib.sha256(body).hexdigest() != lab.digests[scenario.path.lstrip("/")]:
            system.broken[scenario.key] = f"GET {scenario.path} returned {len(body)} bytes"


def run_once(h2load: str, system: System, scenario: Scenario, requests: int,
             problems: list[str]) -> H2Result | None:
    server = system.server(scenario)
    if server is None or scenario.key in system.broken or server.proc.poll() is not None:
        return None
    argv = command(h2load, system.url(scenario), connections=scenario.connections,
                   streams=H2_STREAMS, requests=requests)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if server.proc.poll() is not None:
        problems.append(f"{server.name} exited during {scenario.label}:\n{server.log_tail()}")
        return None
    try:
        result = parse(proc.stdout)
    except H2loadOutputError as exc:
        problems.append(f"h2load on {system.name} {scenario.label}: {exc} "
                        f"(stderr: {proc.stderr.strip()[:200]})")
        return None
    if result.protocol != "h2":
        problems.append(f"{system.name} {scenario.label}: ALPN chose {result.protocol}, not h2")
        return None
    return result


def measure(lab: Lab, h2load: str, names: tuple[str, str], products: tuple[str, str], *,
            rounds: int, duration: float, warmup: bool, problems: list[str],
            log: Callable[[str], None]) -> tuple[list[report.Row], Runs]:
    """Start both systems, run the rounds, and return the rows (reference first in
    ``names``) with every run's figures."""
    runs: Runs = {s.key: {} for s in H2_SCENARIOS}
    try:
        cert, key = certificate(lab.dir)
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"HTTP/2 rows not measured: no certificate from openssl: {exc}")
        return _rows(runs, names), runs
    systems = [lab.start_h2_system(name, product, cert, key)
               for name, product in zip(names, products, strict=True)]
    for system in systems:
        for site, why in system.failed.items():
            problems.append(f"{system.name} (h2 {site}) could not start: {why}")
        verify(lab, system)
        for scenario_key, why in system.broken.items():
            problems.append(f"{system.name}: {scenario_key} skipped: {why}")
    requests = max(1_000, round(H2_REQUESTS_PER_SECOND * duration))
    if warmup:
        for scenario in H2_SCENARIOS:
            for system in systems:
                run_once(h2load, system, scenario, requests // 4, problems)
    for number in range(rounds):
        order = systems if number % 2 == 0 else systems[::-1]
        for scenario in H2_SCENARIOS:
            for system in order:
                result = run_once(h2load, system, scenario, requests, problems)
                if result is None:
                    continue
                runs[scenario.key].setdefault(system.name, []).append(result)
                failed = f"  {result.failed} failed streams" if result.failed else ""
                log(f"round {number + 1}/{rounds}  {scenario.label:<15} {system.name:<8} "
                    f"{result.req_per_s:,.0f} req/s{failed}")
    return _rows(runs, names), runs


def _rows(runs: Runs, names: tuple[str, str]) -> list[report.Row]:
    reference, contender = names
    rows = []
    for scenario in H2_SCENARIOS:
        ref_runs = runs[scenario.key].get(reference, [])
        con_runs = runs[scenario.key].get(contender, [])
        ref = report.median([r.req_per_s for r in ref_runs])
        con = report.median([r.req_per_s for r in con_runs])
        value = report.ratio(con, ref)
        failed = {name: sum(r.failed for r in got)
                  for name, got in ((reference, ref_runs), (contender, con_runs))}
        # Each round ran both systems back to back: its own ratio shows the noise. (A
        # round one system missed is reported as a problem; the pairs then end early.)
        pairs = [f"{c.req_per_s / r.req_per_s:.2f}"
                 for r, c in zip(ref_runs, con_runs, strict=False) if r.req_per_s]
        note = (f"h2load -c {scenario.connections} -m {H2_STREAMS}, TLS; ratio by round "
                f"{' '.join(pairs) or '-'}; failed streams: "
                + ", ".join(f"{name} {count}" for name, count in failed.items()))
        rows.append(report.Row(
            f"{scenario.label}", scenario.metric, ref, con, value, str(scenario.target),
            report.verdict(scenario.target, value, failed[contender]), note))
    return rows
