"""``make run``: web, worker and scheduler in the foreground; Ctrl-C stops each once, and one that dies takes the
run down with it, named and with a non-zero exit."""

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.processes import ROOT, free_port
from tests.test_embedded_default import (
    descendants,
    embedded_env,
    is_worker_main,
    kill_all,
    stop_group,
    wait_until_workers_ok,
)

PROCESSES = ("web", "worker", "scheduler")


class MakeRun:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log = directory / "make-run.log"
        env = embedded_env(directory, WEB_PORT=str(self.port))
        with self.log.open("wb") as handle:
            # -o: the virtualenv counts as installed; the test must not reinstall packages.
            self.process = subprocess.Popen(
                ["make", "-o", ".venv/.installed", "run"],
                cwd=ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started: list[psutil.Process] = []

    def wait_ready(self) -> "MakeRun":
        wait_until_workers_ok(self.port, self.process, self.log, timeout=180)
        self.started = descendants(self.process.pid)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.process)
        kill_all(self.started)

    def still_running(self) -> list[str]:
        return [" ".join(p.cmdline()) for p in self.started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run = MakeRun(tmp_path)
    try:
        yield run.wait_ready()
    finally:
        run.stop()


def stop_lines(output: str) -> dict[str, int]:
    return {name: len(re.findall(rf"\b{name}\.1 stopped \(rc=", output)) for name in PROCESSES}


@pytest.mark.timeout(300)
def test_ctrl_c_stops_every_process_once_within_10_seconds(make_run: MakeRun) -> None:
    started = time.monotonic()
    os.killpg(make_run.process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    make_run.process.wait(timeout=15)
    took = time.monotonic() - started

    output = make_run.output()
    assert took < 10, output[-3000:]
    assert stop_lines(output) == dict.fromkeys(PROCESSES, 1), output[-3000:]
    assert output.count("Warm shutdown") + output.count("Cold shutdown") <= 1
    assert "Segmentation fault" not in output
    assert make_run.still_running() == []


@pytest.mark.timeout(300)
def test_a_worker_killed_with_sigkill_stops_the_run_with_a_failure_naming_it(make_run: MakeRun) -> None:
    worker = next(p for p in make_run.started if is_worker_main(p))

    worker.kill()
    make_run.process.wait(timeout=15)

    output = make_run.output()
    assert make_run.process.returncode != 0
    assert re.search(r"worker\.1 stopped \(rc=-9\)", output), output[-3000:]
    assert make_run.still_running() == []


@pytest.mark.timeout(300)
def test_a_worker_that_shuts_down_cleanly_on_its_own_still_fails_the_run(make_run: MakeRun) -> None:
    worker = next(p for p in make_run.started if is_worker_main(p))

    worker.terminate()  # as "celery control shutdown" or an operator's kill would
    make_run.process.wait(timeout=15)

    output = make_run.output()
    assert make_run.process.returncode != 0
    first_stop = re.search(r"(\w+)\.1 stopped \(rc=", output)
    assert first_stop and first_stop.group(1) == "worker", output[-3000:]
    assert "a process exited on its own" in output
    assert make_run.still_running() == []
