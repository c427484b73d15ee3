"""The embedded default (no DATABASE_URL, REDIS_URL or CELERY_BROKER_URL): its broker holds up under sustained
load, and /healthz/workers tells a live worker from a dead one."""

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from queue import Empty

import psutil
import pytest
import requests
from django.test import Client
from django.utils import timezone
from kombu import Connection

from deliveries.models import WorkerHeartbeat
from tests.processes import ROOT, free_port
from tests.receiver import Receiver

BURSTS, BURST_SIZE = 20, 500
PUBLISH_BURSTS = f"""
import time
from subscriptions.models import Subscription
from webhooks import publish
Subscription.objects.create(url=URL, events=["order.#"])
for burst in range({BURSTS}):
    for n in range({BURST_SIZE}):
        publish("order.created", {{"burst": burst, "n": n}})
    time.sleep(0.2)
"""


def embedded_env(directory: Path, **extra: str) -> dict[str, str]:
    """This environment without any server named: SQLite and the embedded broker under ``directory``."""
    unset = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env.update(
        HOOKRELAY_DATA_DIR=str(directory),
        DATABASE_URL=f"sqlite:///{directory / 'db.sqlite3'}",
        SECRET_KEY="test-secret-key-for-the-embedded-default",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it, so nothing outlives the test."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def worker_main(pid: int) -> psutil.Process:
    """The Celery worker's main process among ``pid``'s descendants (its pool processes are its children)."""
    for process in descendants(pid):
        if is_worker_main(process):
            return process
    raise AssertionError("no celery worker process found")


def is_worker_main(process: psutil.Process) -> bool:
    line = " ".join(process.cmdline())
    return "celery" in line and " worker" in line and "celery" not in " ".join(process.parent().cmdline())


def wait_until_workers_ok(port: int, supervisor: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert supervisor.poll() is None, f"exited early:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            response = requests.get(f"http://127.0.0.1:{port}/healthz/workers", timeout=5)
            if response.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/healthz/workers never ok:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def honcho(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, dict[str, str], Path]]:
    """The Procfile's web, worker and scheduler under honcho, as ``make run`` starts them, on the embedded default."""
    port = free_port()
    env = embedded_env(tmp_path, WEB_PORT=str(port), WEBHOOK_ALLOW_PRIVATE_NETWORKS="true")
    manage(env, "migrate", "--noinput", "-v0")
    log = tmp_path / "honcho.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", "Procfile"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: list[psutil.Process] = []
    try:
        wait_until_workers_ok(port, process, log)
        started = descendants(process.pid)
        yield process, port, env, log
    finally:
        stop_group(process)
        kill_all(started)


# --- /healthz/workers ---


@pytest.mark.django_db
def test_workers_are_stale_with_no_sign_of_life_yet() -> None:
    response = Client().get("/healthz/workers")

    assert (response.status_code, response.json()) == (503, {"status": "stale", "last_seen_s": None})


@pytest.mark.django_db
def test_workers_are_ok_right_after_a_sweep() -> None:
    WorkerHeartbeat.beat()

    response = Client().get("/healthz/workers")

    assert (response.status_code, response.json()) == (200, {"status": "ok", "last_seen_s": 0})


@pytest.mark.django_db
def test_workers_are_stale_after_30_seconds_without_a_sweep() -> None:
    WorkerHeartbeat.objects.create(name=WorkerHeartbeat.WORKERS, seen_at=timezone.now() - timedelta(seconds=31))

    response = Client().get("/healthz/workers")

    assert response.status_code == 503
    assert response.json()["status"] == "stale" and response.json()["last_seen_s"] in (31, 32)


@pytest.mark.django_db
def test_a_heartbeat_moves_the_one_row_forward() -> None:
    WorkerHeartbeat.objects.create(name=WorkerHeartbeat.WORKERS, seen_at=timezone.now() - timedelta(hours=1))

    WorkerHeartbeat.beat()

    assert WorkerHeartbeat.objects.count() == 1
    assert timezone.now() - WorkerHeartbeat.last_seen() < timedelta(seconds=5)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/healthz/workers"])
def test_health_endpoints_answer_other_methods_with_a_json_405(path: str) -> None:
    response = Client().post(path)

    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert response.json() == {"detail": 'Method "POST" not allowed.'}


# --- the embedded broker ---


def test_the_broker_keeps_every_file_under_the_data_dir(tmp_path: Path) -> None:
    """With no broker named, Celery's queues and exchange tables go under HOOKRELAY_DATA_DIR, not the checkout."""
    env = embedded_env(tmp_path)
    script = (
        "from django.conf import settings; from kombu import Connection; "
        "c = Connection(settings.CELERY_BROKER_URL, transport=settings.CELERY_BROKER_TRANSPORT, "
        "transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS); "
        "q = c.SimpleQueue('probe'); q.put({'n': 1}); print(q.get(timeout=5).payload)"
    )
    before = set(os.listdir(ROOT))

    output = manage(env, "shell", "-c", script)

    assert output.strip().endswith("{'n': 1}")
    assert set(os.listdir(ROOT)) <= before
    assert (tmp_path / "broker" / "control" / "probe.exchange").exists()


RACE_MESSAGES = 4000


def race_options(folder: str) -> dict[str, object]:
    return {"data_folder_in": folder, "data_folder_out": folder, "control_folder": f"{folder}/control"}


def race_write(folder: str, first: int) -> None:
    from deliveries.embedded_broker import Transport

    with Connection(transport=Transport, transport_options=race_options(folder)) as connection:
        queue = connection.SimpleQueue("race")
        for n in range(first, RACE_MESSAGES, 4):
            queue.put({"n": n, "padding": "x" * 8192})


def race_read(folder: str, out: multiprocessing.Queue) -> None:
    from deliveries.embedded_broker import Transport

    options = {**race_options(folder), "polling_interval": 0.001}
    with Connection(transport=Transport, transport_options=options) as connection:
        queue = connection.SimpleQueue("race")
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 3:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                continue
            out.put(message.payload["n"])
            message.ack()
            idle_since = time.monotonic()


def test_readers_racing_writers_in_other_processes_get_every_message_once_and_whole(tmp_path: Path) -> None:
    """kombu's own filesystem transport fails this: its readers find files their writers have not filled yet."""
    fork = multiprocessing.get_context("fork")
    out = fork.Queue()
    readers = [fork.Process(target=race_read, args=(str(tmp_path), out), daemon=True) for _ in range(2)]
    writers = [fork.Process(target=race_write, args=(str(tmp_path), first), daemon=True) for first in range(4)]
    for process in readers + writers:
        process.start()
    received: list[int] = []
    deadline = time.monotonic() + 120
    while (any(reader.is_alive() for reader in readers) or not out.empty()) and time.monotonic() < deadline:
        with contextlib.suppress(Empty):
            received.append(out.get(timeout=0.5))
    written = [writer.exitcode for writer in writers]
    for process in readers + writers:
        process.kill()

    assert written == [0, 0, 0, 0]
    assert sorted(received) == list(range(RACE_MESSAGES))


@pytest.mark.timeout(900)
def test_the_embedded_default_delivers_20_bursts_of_500_events_without_losing_its_worker(
    honcho: tuple[subprocess.Popen, int, dict[str, str], Path],
) -> None:
    process, _port, env, log = honcho
    worker = worker_main(process.pid)
    receiver = Receiver().start()
    try:
        started = time.monotonic()
        manage(env, "shell", "-c", f"URL = {receiver.url()!r}\n" + PUBLISH_BURSTS, timeout=600)
        published = time.monotonic() - started
        statuses = wait_for_deliveries(Path(env["DATABASE_URL"].removeprefix("sqlite:///")), log, timeout=300)
        print(f"published in {published:.1f} s, all delivered after {time.monotonic() - started:.1f} s")
        ids = {
            {name.lower(): value for name, value in request.headers.items()}["webhook-id"]
            for request in receiver.requests
        }
    finally:
        receiver.stop()

    assert statuses == {"succeeded": BURSTS * BURST_SIZE}
    assert len(ids) == BURSTS * BURST_SIZE
    assert worker.is_running() and worker == worker_main(process.pid)
    assert "Unrecoverable error" not in log.read_text(errors="replace")


def wait_for_deliveries(database: Path, log: Path, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    statuses: dict[str, int] = {}
    while time.monotonic() < deadline:
        with sqlite3.connect(database, timeout=30) as connection:
            rows = connection.execute("SELECT status, COUNT(*) FROM deliveries_delivery GROUP BY status").fetchall()
        statuses = dict(rows)
        if statuses.get("succeeded", 0) >= BURSTS * BURST_SIZE:
            return statuses
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:]
    raise AssertionError(f"not all delivered within {timeout} s: {statuses}\n{tail}")


@pytest.mark.services
def test_a_running_worker_and_scheduler_turn_healthz_workers_ok(start_worker) -> None:
    assert Client().get("/healthz/workers").status_code == 503

    start_worker(beat=True)

    deadline = time.monotonic() + 30
    while Client().get("/healthz/workers").status_code != 200:
        assert time.monotonic() < deadline, Client().get("/healthz/workers").json()
        time.sleep(0.2)
    assert Client().get("/healthz/workers").json()["last_seen_s"] <= 30
