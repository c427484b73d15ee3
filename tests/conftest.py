"""Shared fixtures: tenants, a real local receiver, and a real Celery worker process for service tests."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from subscriptions.models import Subscription, Tenant
from tests.receiver import Receiver, Reply

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def _postgres_missing() -> str | None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return "DATABASE_URL does not name a PostgreSQL database"
    return None


def _redis_missing() -> str | None:
    if not settings.REDIS_URL:
        return "REDIS_URL is not set"
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis at REDIS_URL does not answer: {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [reason for reason in (_postgres_missing(), _redis_missing()) if reason]
    if not missing:
        return
    if REQUIRE_SERVICES:
        raise pytest.UsageError("REQUIRE_SERVICES=1 but " + "; ".join(missing))
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis: " + "; ".join(missing))
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def acme(db) -> Tenant:
    return Tenant.objects.create(slug="acme", name="Acme")


@pytest.fixture
def globex(db) -> Tenant:
    return Tenant.objects.create(slug="globex", name="Globex")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def allow_loopback(settings) -> None:
    """Endpoints in tests live on 127.0.0.1, which the guard refuses unless private networks are allowed."""
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True


@pytest.fixture
def subscribe(db) -> Callable[..., Subscription]:
    def make(url: str, events: list[str] | None = None, **fields) -> Subscription:
        return Subscription.objects.create(url=url, events=events or ["#"], **fields)

    return make


def reply_sequence(*replies: Reply) -> Callable:
    """Answer each request with the next reply; the last one repeats."""
    remaining = list(replies)

    def reply(request) -> Reply:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return reply


# --- A real Celery worker process (services tests) ---


def database_url() -> str:
    """The URL of the database the test run is using (pytest-django's test database)."""
    from django.db import connection

    d = connection.settings_dict
    auth = d["USER"] + (f":{d['PASSWORD']}" if d["PASSWORD"] else "")
    return f"postgres://{auth}@{d['HOST'] or '127.0.0.1'}:{d['PORT'] or 5432}/{d['NAME']}"


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path, beat: bool, concurrency: int) -> None:
        args = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO"]
        args += [f"--concurrency={concurrency}", "--without-mingle", "--without-gossip", "-n", f"w{time.time_ns()}@%h"]
        if beat:
            args += ["--beat", f"--schedule={log.parent / 'beat-schedule'}"]
        self.log = log
        self.handle = log.open("ab")
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 30.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log.read_text(errors="replace"):
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children, mid-flight."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def flush_redis() -> Callable[[], None]:
    import redis

    def flush() -> None:
        redis.Redis.from_url(settings.REDIS_URL).flushdb()

    flush()
    return flush


@pytest.fixture
def start_worker(transactional_db, tmp_path, flush_redis) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``celery -A config worker`` processes against the test database and Redis."""
    workers: list[WorkerProcess] = []

    def start(beat: bool = True, concurrency: int = 2, **overrides: str) -> WorkerProcess:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url(),
            REDIS_URL=settings.REDIS_URL,
            CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
            HOOKRELAY_DATA_DIR=str(tmp_path),
            WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
            WEBHOOK_TIMEOUT="5",
            WEBHOOK_LEASE_MARGIN="5",
            EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
            EMAIL_FILE_PATH=str(tmp_path / "mail"),
            ADMINS="Ops:ops@example.com",
        )
        env.update(overrides)
        worker = WorkerProcess(env, tmp_path / f"worker{len(workers)}.log", beat, concurrency).wait_ready()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
