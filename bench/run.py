"""Benchmark Rex against nginx on this machine (issue 6; see docs/bench.md).

Usage:
  run.py [options]
  run.py -h | --help

Options:
  --rounds N     rounds; each runs every scenario on every system [default: 3]
  --duration S   seconds of each wrk run [default: 8]
  --quick        smoke run: 1 round of 3 s, no warm-up
  --threads T    wrk threads; 1 suits a 2-core box (see docs/bench.md) [default: 1]
  --json FILE    also write the results as JSON to FILE; with "-" the JSON goes
                 to stdout and the tables to stderr
  --calibrate    run a second nginx where Rex would go: the ratios then show
                 this machine's noise (Rex is not started)
  --skip-idle    skip the 10,000 idle connections measure
  --keep         keep the temp dir (configs, server logs) and print its path

Nothing is installed: nginx and wrk must be on the machine already, and h2load
(nghttp2-client) for the HTTP/2 rows (without it they are reported as not measured).
Exit status: 0 every target met; 1 a target missed or not measured (Rex did
not start, a server died); 2 bad usage, or nginx or wrk missing.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as `python bench/run.py`: the checkout's root makes `bench` and
    # `rex_workers` importable, as `python -m bench.run` would.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json
import shutil
import tempfile
from dataclasses import dataclass

from docopt import DocoptExit, docopt

from bench import idle, report
from bench.lab import Lab
from bench.scenarios import IDLE_CONNECTIONS, SCENARIOS
from bench.session import Results, Session, log

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
INSTALL_HINT = "sudo apt-get install nginx-light wrk nghttp2-client"


class UsageError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Options:
    rounds: int
    duration: float
    threads: int
    warmup: bool
    json_path: str | None
    calibrate: bool
    idle: bool
    keep: bool


def parse_options(argv: list[str] | None = None) -> Options:
    """The command line as typed values, checked once here."""
    args = docopt(__doc__, argv=argv)
    quick = args["--quick"]
    try:
        rounds = 1 if quick else int(args["--rounds"])
        duration = 3.0 if quick else float(args["--duration"])
        threads = int(args["--threads"])
    except ValueError as exc:
        raise UsageError(f"not a number: {exc}") from None
    if rounds < 1 or duration < 1 or threads < 1:
        raise UsageError("--rounds and --threads must be >= 1, --duration >= 1 second")
    return Options(rounds, duration, threads, warmup=not quick, json_path=args["--json"],
                   calibrate=args["--calibrate"], idle=not args["--skip-idle"],
                   keep=args["--keep"])


@dataclass(frozen=True, slots=True)
class Tools:
    nginx: str
    wrk: str
    h2load: str | None  # the HTTP/2 rows only; without it they are reported missing


def find_tools() -> Tools | None:
    """nginx and wrk, or None after saying how to get them. Never installs anything."""
    # Debian puts nginx in /usr/sbin, which is not on a normal user's PATH.
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    wrk = shutil.which("wrk")
    if nginx and wrk:
        return Tools(nginx, wrk, shutil.which("h2load"))
    missing = " and ".join(name for name, path in (("nginx", nginx), ("wrk", wrk)) if not path)
    print(f"bench: {missing} not found; the bench needs nginx and wrk and installs nothing "
          f"itself. On Debian or Ubuntu:\n    {INSTALL_HINT}", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_options(argv)
    except (UsageError, DocoptExit) as exc:
        print(f"bench: {exc}" if isinstance(exc, UsageError) else exc, file=sys.stderr)
        return EXIT_USAGE
    tools = find_tools()
    if tools is None:
        return EXIT_USAGE
    nofile = idle.raise_nofile(IDLE_CONNECTIONS + idle.FD_MARGIN)
    workdir = tempfile.mkdtemp(prefix="rex-bench-")
    lab = Lab(workdir, tools.nginx)
    try:
        session = Session(lab, tools.wrk, rounds=opts.rounds, duration=opts.duration,
                          threads=opts.threads, warmup=opts.warmup, h2load=tools.h2load)
        results = session.run(calibrate=opts.calibrate, measure_idle=opts.idle, nofile=nofile)
    except KeyboardInterrupt:
        log("interrupted; stopping the servers")
        return EXIT_FAILED
    finally:
        lab.stop()
        if opts.keep:
            log(f"temp dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    emit(results, opts)
    return EXIT_FAILED if results.problems or report.failed(results.rows) else EXIT_OK


def emit(results: Results, opts: Options) -> None:
    """The tables on stdout (stderr when stdout carries JSON), the JSON if asked."""
    meta = dict(results.meta, rounds=opts.rounds, duration_s=opts.duration,
                wrk_threads=opts.threads, warmup=opts.warmup)
    out = sys.stderr if opts.json_path == "-" else sys.stdout
    print(render(results, meta), file=out)
    if opts.json_path is None:
        return
    document = json.dumps(results.as_json(meta), indent=2, sort_keys=True)
    if opts.json_path == "-":
        print(document)
    else:
        with open(opts.json_path, "w", encoding="utf-8") as f:
            f.write(document + "\n")


def render(results: Results, meta: dict) -> str:
    ref, con = results.reference, results.contender
    parts = [f"Rex bench: {ref} vs {con}, {meta['rounds']} round(s) x {meta['duration_s']:g} s, "
             f"wrk {meta['wrk_threads']} thread(s), {meta['cpus']} CPU(s)"]
    if results.problems:
        parts.append("PROBLEMS:\n" + "\n".join(f"  - {p}" for p in results.problems))
    parts.append(report.summary_table(results.rows, ref, con))
    parts.append(report.latency_table(results.samples, SCENARIOS, [ref, con]))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
