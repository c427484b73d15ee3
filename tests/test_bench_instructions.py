"""The instruction-count benchmark still works: its drivers publish, post and deliver for real (``--plain``, no
valgrind in the test: counting is what valgrind does, the drivers are what could break)."""

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bench.instructions import DELIVER_TYPE, EVENT_TYPE, WARM_UP, callgrind_total
from tests.test_bench_quick import ROOT, bench_database_url, bench_redis_url


def test_the_instruction_total_is_read_from_callgrind_output(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_bytes(
        b"version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfl=(1) x.c\nfn=(1) main\n3 1234\n"
        b"summary: 987654\ntotals: 987654\n"
    )

    assert callgrind_total(out) == 987654


@pytest.mark.services
@pytest.mark.timeout(600)
def test_the_drivers_publish_and_post_for_real() -> None:
    database_url = bench_database_url().replace("hookrelay_bench_quick_", "hookrelay_bench_instr_")
    args = [sys.executable, "-m", "bench.instructions", "--plain", "--n", "3"]
    args += ["--database-url", database_url, "--redis-url", bench_redis_url()]
    try:
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=540)

        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "publish " in result.stdout and "ingest " in result.stdout and "deliver " in result.stdout
        with psycopg.connect(database_url) as conn:
            events = conn.execute("SELECT count(*) FROM webhooks_event WHERE type = %s", [EVENT_TYPE]).fetchone()[0]
            deliveries = conn.execute("SELECT count(*) FROM deliveries_delivery WHERE status = 'pending'").fetchone()[0]
            delivered = conn.execute(
                "SELECT count(*) FROM deliveries_delivery d JOIN deliveries_attempt a ON a.delivery_id = d.id "
                "WHERE d.event_type = %s AND d.status = 'succeeded' AND a.status_code = 200",
                [DELIVER_TYPE],
            ).fetchone()[0]
        # publish and ingest ran twice each (0 and 3 calls after the warm-up), each call one event and one
        # delivery, left pending; deliver's second run (3 after the warm-up) sent every row to the sink.
        assert events == deliveries == 2 * (2 * WARM_UP + 3)
        assert delivered == WARM_UP + 3
    finally:
        parts = urlsplit(database_url)
        name = parts.path.lstrip("/")
        with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
