"""Hookrelay benchmarks: ``python -m bench.run [--quick] [--runs N] [--only scenario,...] [--output FILE]``.

Starts the real stack on this machine only (127.0.0.1): a dedicated PostgreSQL database (created and
migrated here), a dedicated Redis db, the sink, ``celery -A config worker --beat`` (prefork, one process
per core) and, for ingest, gunicorn with 2 workers. Runs each scenario ``--runs`` times, prints a table of
the medians against the targets of issue 6 and writes them, with every run's raw figures, as JSON.

``--quick`` runs every scenario once with small counts and checks correctness only (every event
delivered, nothing failed): the exit status is non-zero otherwise. Speed is never asserted.
"""

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench import scenarios, stack

RESULTS = stack.ROOT / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/hookrelay_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"

# (scenario, metric, target as text, test of a value against it)
TARGETS = [
    ("throughput", "drain_per_s", ">= 6000", lambda v: v >= 6000),
    ("throughput", "cpu_s_per_1000", "<= 0.4", lambda v: v <= 0.4),
    ("throughput", "end_to_end_per_s", ">= 2000", lambda v: v >= 2000),
    ("fanout", "all_delivered_s", "<= 1.5", lambda v: v <= 1.5),
    ("fanout", "publish_s", "< 0.3", lambda v: v < 0.3),
    ("latency", "p50_ms", "< 6", lambda v: v < 6),
    ("latency", "p95_ms", "", None),
    ("latency", "p99_ms", "< 12", lambda v: v < 12),
    ("isolation", "healthy_fraction", ">= 0.9", lambda v: v >= 0.9),
    ("ingest", "requests_per_s", ">= 1000", lambda v: v >= 1000),
    ("soak", "rss_growth_pct", "< 5", lambda v: v < 5),
    ("soak", "peak_rss_mb", "", None),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Hookrelay benchmarks against a real local stack.")
    parser.add_argument("--quick", action="store_true", help="small counts, one run, correctness checks only")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default 3; 1 with --quick)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(scenarios.SCENARIOS)}")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON file (default bench/results/latest.json; --quick: a temp file)"
    )
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--concurrency", type=int, default=None, help="worker processes (default: the app's, two per core)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the runs, one more drain, end to end, isolation and ingest under py-spy",
    )
    parser.add_argument("--drop-database", action="store_true", help="drop the benchmark database at the end")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work folder with every process log")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in scenarios.SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {scenarios.SCENARIOS}")
    args.scenarios = only or list(scenarios.SCENARIOS)
    if args.output is None:
        # A quick run proves the harness works; its figures mean nothing and never replace the committed ones.
        args.output = (
            Path(tempfile.gettempdir()) / "hookrelay-bench-quick.json" if args.quick else RESULTS / "latest.json"
        )
    return args


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "postgresql": _server_version(),
    }


def reference_loop_ms(repeat: int = 5) -> float:
    """Milliseconds one core takes for a fixed pure-Python loop (a million additions), median of ``repeat``.

    Not a scenario: a yardstick of the machine's pace at the time, so that figures from two machines, or
    from one shared machine at two hours, can be told apart from a change in the code.
    """
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 1)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _server_version() -> str | None:
    with contextlib.suppress(Exception):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return cursor.fetchone()[0]
    return None


def commit() -> tuple[str, bool]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=stack.ROOT, capture_output=True, text=True, timeout=30)
        return result.stdout.strip()

    return git("rev-parse", "HEAD") or "unknown", bool(git("status", "--porcelain", "--untracked-files=no"))


def setup_django(config: stack.Config) -> None:
    os.environ.update(config.env())
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()


def median(values: list) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 4) if numbers else None


def run_scenario(ctx: scenarios.Context, name: str, runs: int) -> dict:
    results = []
    for index in range(runs):
        ctx.say(f"{name}: run {index + 1} of {runs}")
        started = time.monotonic()
        try:
            outcome = scenarios.RUNNERS[name](ctx).as_dict()
        except Exception as exc:  # a scenario that breaks is reported, and the others still run
            traceback.print_exc()
            outcome = {"metrics": {}, "complete": False, "problems": [f"{name}: {type(exc).__name__}: {exc}"]}
        outcome["duration_s"] = round(time.monotonic() - started, 1)
        # Other work on the machine skews every figure: the 1-minute load average at the end of the run.
        outcome["load_average_1m"] = round(os.getloadavg()[0], 2)
        figures = ", ".join(f"{k}={v}" for k, v in outcome["metrics"].items())
        ctx.say(f"{name}: {figures}" + ("" if outcome["complete"] else " (incomplete)"))
        for problem in outcome["problems"]:
            ctx.say(f"{name}: PROBLEM {problem}")
        results.append(outcome)
    keys = [key for scenario, key, *_ in TARGETS if scenario == name]
    medians = {key: median([r["metrics"].get(key) for r in results]) for key in keys}
    return {"medians": medians, "runs": results}


def table(report: dict) -> str:
    rows = [("scenario", "metric", "median", "runs", "target", "met")]
    for scenario, key, target, test in TARGETS:
        if scenario not in report["scenarios"]:
            continue
        value = report["scenarios"][scenario].get(key)
        runs = [r["metrics"].get(key) for r in report["runs"][scenario]["runs"]]
        met = "" if test is None or value is None else ("yes" if test(value) else "NO")
        rows.append((scenario, key, _fmt(value), " ".join(_fmt(v) for v in runs), target, met))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


PROJECT = ("deliveries/", "webhooks/", "subscriptions/", "config/")


def summarise_profile(folded: Path, name: str, top: int = 25) -> str:
    """Self time per function and per package, and inclusive time of the project's own functions, from
    py-spy's folded stacks (line numbers merged; idle threads are not sampled)."""
    own: dict[str, int] = {}
    packages: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack_text.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        package = _package(frames[-1])
        packages[package] = packages.get(package, 0) + count
        for frame in set(frames):
            if frame.partition(" (")[2].startswith(PROJECT):
                inclusive[frame] = inclusive.get(frame, 0) + count

    def lines(counts: dict[str, int]) -> list[str]:
        ordered = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [f"  {100 * count / max(1, total):5.1f}%  {frame}" for frame, count in ordered]

    out = [f"py-spy, {name}: {total} samples of the busy threads of every process of the tree", ""]
    out += ["self time by package (where the CPU goes):", *lines(packages), ""]
    out += ["self time by function:", *lines(own), ""]
    out += ["inclusive time of the project's own functions (the function and all it calls):", *lines(inclusive)]
    return "\n".join(out) + "\n"


def _package(frame: str) -> str:
    """``django``, ``psycopg``, ``deliveries`` ... or ``stdlib:socket``: where a frame's code lives."""
    path = frame.partition(" (")[2].rstrip(")")
    if not path:
        return "(native or unknown)"
    head = path.split("/", 1)[0].removesuffix(".py")
    if head in sys.stdlib_module_names or head.startswith("<frozen"):
        return f"stdlib:{head.strip('<>').removeprefix('frozen ')}"
    return head


def _frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", str(stack.ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack.install_signal_handlers()
    atexit.register(stack.cleanup)
    workdir = Path(tempfile.mkdtemp(prefix="hookrelay-bench-"))
    config = stack.Config(args.database_url, args.redis_url, workdir, args.concurrency or 0)
    sizes = scenarios.QUICK if args.quick else scenarios.FULL
    failed = False
    sink = None
    try:
        stack.check_names(config)
        print(f"Hookrelay benchmarks ({'quick' if args.quick else f'{args.runs} runs each'}); work folder {workdir}")
        stack.ensure_services(config)
        stack.recreate_database(config)
        setup_django(config)
        if not config.concurrency:
            from django.conf import settings

            config.concurrency = settings.CELERY_WORKER_CONCURRENCY
        print(f"  database {config.database_name}, redis {config.redis_url}, {config.concurrency} worker processes")
        load_before = os.getloadavg()
        slow_delay = sizes.isolation_timeout + 3
        sink = stack.Sink(config, slow_delay=slow_delay)
        ctx = scenarios.Context(config, sink, sizes, args.quick, profile_dir=workdir / "profile")
        started = datetime.now(UTC)
        sha, dirty = commit()
        report: dict = {
            "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine(),
            "commit": sha,
            "scenarios": {},
            "commit_dirty": dirty,
            "mode": "quick" if args.quick else "full",
            "runs_per_scenario": args.runs,
            "sizes": vars(sizes),
            "environment": {
                "load_average_before": [round(x, 2) for x in load_before],
                "reference_loop_ms_before": reference_loop_ms(),
                "webhook_settings": {k: v for k, v in os.environ.items() if k.startswith("WEBHOOK_")},
                "worker_concurrency": config.concurrency,
            },
            "targets": {f"{s}.{k}": t for s, k, t, _ in TARGETS if t},
            "runs": {},
        }
        for name in args.scenarios:
            result = run_scenario(ctx, name, args.runs)
            report["scenarios"][name] = result["medians"]
            report["runs"][name] = result
            problems = [p for run in result["runs"] for p in run["problems"]]
            incomplete = [run for run in result["runs"] if not run["complete"]]
            if problems or (args.quick and incomplete):
                failed = True
            if args.quick and incomplete:
                ctx.say(f"{name}: PROBLEM not every event was delivered within the time limit")
        if args.profile:
            report["profile"] = {}
            for target in ("drain", "end_to_end", "isolation", "ingest"):
                ctx.say(f"profile: one more {target} run under py-spy")
                outcome = scenarios.profiled(ctx, target)
                profiles = outcome.details.get("profiles") or {}
                for name, folded in profiles.items():
                    if not Path(folded).is_file():
                        ctx.say(f"profile: py-spy wrote nothing for {name}")
                        continue
                    summary = summarise_profile(Path(folded), name)
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    (RESULTS / f"profile-{name}.txt").write_text(summary)
                    report["profile"][name] = {
                        "metrics": outcome.metrics,
                        "summary": f"bench/results/profile-{name}.txt",
                    }
                    print(summary)
        report["environment"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        report["environment"]["reference_loop_ms_after"] = reference_loop_ms()
        report["duration_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print()
        pace = [report["environment"][f"reference_loop_ms_{when}"] for when in ("before", "after")]
        print(
            f"Machine: {report['machine']['cores']} cores, {report['machine']['memory_gb']} GB; commit {sha[:12]}; "
            f"reference loop {pace[0]} ms before, {pace[1]} ms after"
        )
        print(table(report))
        print(f"\nWritten to {args.output}")
        if failed:
            print("\nCORRECTNESS PROBLEMS (see above): every event must be delivered and none may fail")
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted: stopping every process", file=sys.stderr)
        failed = True
    except stack.StackError as exc:
        print(f"\nthe stack failed: {exc}", file=sys.stderr)
        failed = True
    finally:
        stack.cleanup()
        if args.drop_database:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
                stack.drop_database(config)
        if failed or args.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
