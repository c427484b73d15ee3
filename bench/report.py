"""The README's table of figures from a results file: ``python -m bench.report [bench/results/latest.json]``."""

import json
import sys
from pathlib import Path

from bench.run import RESULTS, TARGETS, _fmt


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"Measured {report['date']} on {machine['cores']} cores ({machine.get('cpu', '?')}), "
        f"{machine['memory_gb']} GB, PostgreSQL {machine.get('postgresql', '?')}, commit "
        f"`{report['commit'][:12]}`{' with local changes' if report.get('commit_dirty') else ''}; "
        f"median of {report.get('runs_per_scenario', '?')} runs.{pace(report)}",
        "",
        "| scenario | figure | median | runs | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, key, target, test in TARGETS:
        if scenario not in report["scenarios"]:
            continue
        value = report["scenarios"][scenario].get(key)
        runs = [run["metrics"].get(key) for run in report["runs"][scenario]["runs"]]
        capped = any(not complete(run, key) for run in report["runs"][scenario]["runs"])
        met = "" if test is None or value is None else ("yes" if test(value) else "**no**")
        shown = _fmt(value) + (" *" if capped else "")
        lines.append(
            f"| {scenario} | `{key}` | {shown} | {' / '.join(_fmt(v) for v in runs)} | {target or '-'} | {met} |"
        )
    return "\n".join(lines) + "\n"


def pace(report: dict) -> str:
    """The machine's reference loop (``bench.run.reference_loop_ms``), where the results file has it."""
    environment = report.get("environment", {})
    before, after = environment.get("reference_loop_ms_before"), environment.get("reference_loop_ms_after")
    if before is None:
        return ""
    return f" Reference loop (one core's pace): {before} ms before the runs, {after} ms after."


def complete(run: dict, key: str) -> bool:
    """Whether the run that gave ``key`` finished its work (throughput holds two: drain and end to end)."""
    part = {"drain_per_s": "drain", "cpu_s_per_1000": "drain", "end_to_end_per_s": "end_to_end"}.get(key)
    return run[part]["complete"] if part and part in run else run["complete"]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    print(markdown(json.loads(path.read_text())), end="")


if __name__ == "__main__":
    main()
