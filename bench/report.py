"""From raw wrk runs to medians, Rex/nginx ratios, verdicts, a table and JSON.

Pure: takes the results the runner collected and returns rows and text;
prints nothing and writes no file.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .scenarios import MBPS, P99_SCENARIO, P99_TARGET, Scenario, Target
from .wrk import WrkResult

PASS, FAIL, MISSING = "PASS", "FAIL", "n/a"

# samples[scenario key][system name] -> one WrkResult per round
Samples = Mapping[str, Mapping[str, Sequence[WrkResult]]]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the summary: a figure for the reference and for the contender."""

    name: str
    unit: str
    reference: float | None
    contender: float | None
    ratio: float | None  # contender / reference
    target: str = ""
    result: str = ""  # PASS, FAIL, n/a, or "" when there is no target
    note: str = ""


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(contender: float | None, reference: float | None) -> float | None:
    if contender is None or not reference:
        return None
    return contender / reference


def verdict(target: Target | None, value: float | None, errors: int = 0) -> str:
    """PASS/FAIL for ``value`` against ``target``; a run with errors never passes.

    Failed requests can be cheap (a fast 502), so a figure that includes
    them says nothing about the speed of the real work.
    """
    if target is None:
        return ""
    if value is None:
        return MISSING
    if errors:
        return FAIL
    return PASS if target.met(value) else FAIL


def _metric(result: WrkResult, scenario: Scenario) -> float:
    return result.mb_per_s if scenario.metric == MBPS else result.req_per_s


def _errors(runs: Sequence[WrkResult]) -> int:
    return sum(r.error_count for r in runs)


def scenario_rows(samples: Samples, scenarios: Sequence[Scenario], reference: str,
                  contender: str) -> list[Row]:
    """Throughput rows in scenario order, then the p99 row the targets name."""
    rows = []
    for scenario in scenarios:
        runs = samples.get(scenario.key, {})
        ref_runs, con_runs = runs.get(reference, ()), runs.get(contender, ())
        ref = median([_metric(r, scenario) for r in ref_runs])
        con = median([_metric(r, scenario) for r in con_runs])
        value = ratio(con, ref)
        errors = _errors(con_runs)
        rows.append(Row(
            name=scenario.label, unit=scenario.metric, reference=ref, contender=con,
            ratio=value, target=str(scenario.target or ""),
            result=verdict(scenario.target, value, errors),
            note=_error_note(_errors(ref_runs), errors, reference, contender)))
        if scenario.key == P99_SCENARIO:
            rows.append(_p99_row(scenario, ref_runs, con_runs))
    return rows


def _p99_row(scenario: Scenario, ref_runs: Sequence[WrkResult],
             con_runs: Sequence[WrkResult]) -> Row:
    ref = median([r.p99_ms for r in ref_runs])
    con = median([r.p99_ms for r in con_runs])
    value = ratio(con, ref)
    return Row(name=f"{scenario.label} p99", unit="ms", reference=ref, contender=con,
               ratio=value, target=str(P99_TARGET),
               result=verdict(P99_TARGET, value, _errors(con_runs)))


def _error_note(ref_errors: int, con_errors: int, reference: str, contender: str) -> str:
    parts = [f"{name}: {count} failed requests"
             for name, count in ((reference, ref_errors), (contender, con_errors)) if count]
    return "; ".join(parts)


def absolute_row(name: str, unit: str, reference: float | None, contender: float | None,
                 target: Target, note: str = "", errors: int = 0) -> Row:
    """A row judged on the contender's own figure (memory), the reference shown for scale."""
    return Row(name=name, unit=unit, reference=reference, contender=contender,
               ratio=ratio(contender, reference), target=str(target),
               result=verdict(target, contender, errors), note=note)


def latency_lines(samples: Samples, scenarios: Sequence[Scenario],
                  systems: Sequence[str]) -> list[tuple[str, ...]]:
    """Per scenario: median p50/p99 (ms) and failed requests of each system."""
    lines = []
    for scenario in scenarios:
        cells = [scenario.label]
        for system in systems:
            runs = samples.get(scenario.key, {}).get(system, ())
            p50, p99 = median([r.p50_ms for r in runs]), median([r.p99_ms for r in runs])
            cells.append(f"{_num(p50)} / {_num(p99)}" if runs else "-")
            cells.append(str(_errors(runs)) if runs else "-")
        lines.append(tuple(cells))
    return lines


def failed(rows: Sequence[Row]) -> bool:
    return any(row.result in (FAIL, MISSING) for row in rows)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def format_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]
    out = []
    for cells in [header, *lines]:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        out.append("  ".join([first, *rest]).rstrip())
    return "\n".join(out)


def summary_table(rows: Sequence[Row], reference: str, contender: str) -> str:
    header = ("measure", "unit", reference, contender, f"{contender}/{reference}", "target",
              "result")
    lines = [(r.name, r.unit, _num(r.reference), _num(r.contender),
              "-" if r.ratio is None else f"{r.ratio:.2f}", r.target or "-", r.result or "-")
             for r in rows]
    text = format_table(header, lines)
    notes = [f"  {r.name}: {r.note}" for r in rows if r.note]
    return text + ("\nnotes:\n" + "\n".join(notes) if notes else "")


def latency_table(samples: Samples, scenarios: Sequence[Scenario],
                  systems: Sequence[str]) -> str:
    header = ["latency (median of rounds)"]
    for system in systems:
        header += [f"{system} p50 / p99 ms", f"{system} failed"]
    return format_table(header, latency_lines(samples, scenarios, systems))


def runs_json(samples: Samples) -> dict:
    """Every round's figures, for anyone who wants more than the medians."""
    return {
        key: {system: [{"req_per_s": r.req_per_s, "mb_per_s": r.mb_per_s, **asdict(r),
                        "errors": dict(r.errors)} for r in runs]
              for system, runs in by_system.items()}
        for key, by_system in samples.items()
    }


def rows_json(rows: Sequence[Row]) -> list[dict]:
    return [asdict(row) for row in rows]
