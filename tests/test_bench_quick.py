"""The benchmark harness still works: ``python -m bench.run --quick`` runs every scenario on the real stack.

Correctness only (every event delivered, nothing failed, the JSON written); never speed (DESIGN.md section 8).
It uses its own database (dropped at the end) and Redis db 9, so it cannot disturb other runs or the
committed figures in bench/results/latest.json.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"throughput", "fanout", "latency", "isolation", "ingest", "soak"}


def bench_database_url() -> str:
    """The test run's PostgreSQL server and credentials, with a database of the benchmark's own."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/hookrelay_bench_quick_{os.getpid()}"


def bench_redis_url() -> str:
    parts = urlsplit(settings.REDIS_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/9", "", ""))


@pytest.mark.services
@pytest.mark.timeout(900)
def test_quick_benchmark_delivers_everything(tmp_path):
    output = tmp_path / "quick.json"
    args = [sys.executable, "-m", "bench.run", "--quick", "--output", str(output), "--drop-database"]
    args += ["--database-url", bench_database_url(), "--redis-url", bench_redis_url()]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=840)

    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    report = json.loads(output.read_text())
    assert set(report["scenarios"]) == SCENARIOS
    assert {"date", "machine", "commit"} <= set(report)
    for name in SCENARIOS:
        for run in report["runs"][name]["runs"]:
            assert run["complete"], (name, run)
            assert run["problems"] == [], (name, run["problems"])
    drain = report["runs"]["throughput"]["runs"][0]["drain"]
    assert drain["succeeded"] == drain["deliveries"] and drain["missing"] == 0
    assert report["runs"]["ingest"]["runs"][0]["statuses"] == {"202": report["sizes"]["ingest_max"]}
    # Where the end to end run's CPU went: every part of the stack took some, the machine at least their sum.
    cpu = report["runs"]["throughput"]["runs"][0]["end_to_end"]["cpu_s"]
    parts = [cpu["publishers"], cpu["worker"], cpu["postgres_redis"], cpu["sink"]]
    assert all(seconds > 0 for seconds in parts), cpu
    # Process and machine times count in clock ticks: a few of them apart at most.
    assert sum(parts) <= cpu["machine"] + 0.25 and cpu["machine"] <= cpu["machine_available"] + 0.25, cpu
    assert "end to end: CPU per 1,000 deliveries publishers" in result.stdout
    cpu = report["runs"]["ingest"]["runs"][0]["cpu_s"]
    assert all(cpu[part] > 0 for part in ("gunicorn", "loadgen", "postgres_redis")), cpu
    assert "ingest: CPU per 1,000 requests" in result.stdout
    # The machine's pace is measured around the runs, so figures from two machines can be compared.
    assert report["environment"]["reference_loop_ms_before"] > 0
    assert report["environment"]["reference_loop_ms_after"] > 0
    assert "reference loop" in result.stdout
