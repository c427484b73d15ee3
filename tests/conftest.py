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
    postgres = _postgres_missing()
    missing = [reason for reason in (postgres, _redis_missing()) if reason]
    if not missing:
        return
    if REQUIRE_SERVICES:
        raise pytest.UsageError("REQUIRE_SERVICES=1 but " + "; ".join(missing))
    skip_services = pytest.mark.skip(reason="needs PostgreSQL and Redis: " + "; ".join(missing))
    skip_postgres = pytest.mark.skip(reason=f"needs PostgreSQL: {postgres}")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip_services)
        elif postgres and "postgresql" in item.keywords:
            item.add_marker(skip_postgres)


@pytest.fixture(autouse=True)
def generous_rate_limits(settings) -> None:
    """Every test client comes from 127.0.0.1: rate-limit tests set their own limits."""
    settings.API_RATE_LIMIT = "1000000/hour"
    settings.API_RATE_LIMIT_ANON = "1000000/hour"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """Client secrets are hashed like passwords; the production hasher costs about a second per client."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operator(db, django_user_model):
    """A test client logged in to the admin as a superuser."""
    from django.test import Client

    user = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return client


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
        from config import ratelimit
        from deliveries import wake

        redis.Redis.from_url(settings.REDIS_URL).flushdb()
        wake._client().promised_until = 0.0  # a listener's promise this process learned went with the data
        ratelimit.counter.forget_batches()  # and the counts it took

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


# --- API clients ---


class Api:
    """A test client holding a real OAuth2 token obtained from /oauth/token/."""

    def __init__(self, client_id: str, client_secret: str, tenant: str | None, scopes: list[str]) -> None:
        from rest_framework.test import APIClient

        self.client_id, self.client_secret, self.tenant, self.scopes = client_id, client_secret, tenant, scopes
        self.http = APIClient(HTTP_HOST="localhost")
        response = self.http.post(
            "/oauth/token/",
            {"grant_type": "client_credentials"},
            HTTP_AUTHORIZATION=basic_auth(client_id, client_secret),
        )
        assert response.status_code == 200, response.content
        self.token = response.json()["access_token"]
        self.http.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")

    def get(self, path: str, **kwargs):
        return self.http.get(path, **kwargs)

    def post(self, path: str, data=None, **kwargs):
        return self.http.post(path, data, format="json", **kwargs)

    def patch(self, path: str, data=None, **kwargs):
        return self.http.patch(path, data, format="json", **kwargs)

    def put(self, path: str, data=None, **kwargs):
        return self.http.put(path, data, format="json", **kwargs)

    def delete(self, path: str, **kwargs):
        return self.http.delete(path, **kwargs)


def basic_auth(client_id: str, client_secret: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()


@pytest.fixture
def make_api(db) -> Callable[..., Api]:
    """``make_api(tenant="acme", scopes=["events.publish"])``: a client created as create_api_client would."""
    from subscriptions.clients import create_api_client

    def make(tenant: str | None = None, scopes: list[str] | None = None, name: str = "test client") -> Api:
        new = create_api_client(name, tenant, scopes)
        return Api(new.client.application.client_id, new.client_secret, tenant, new.client.scope_list)

    return make


@pytest.fixture
def acme_api(make_api) -> Api:
    return make_api(tenant="acme", name="acme")


@pytest.fixture
def globex_api(make_api) -> Api:
    return make_api(tenant="globex", name="globex")


@pytest.fixture
def platform_api(make_api) -> Api:
    return make_api(tenant=None, name="platform")


@pytest.fixture(autouse=True)
def no_outside_dns(monkeypatch) -> dict[str, list[str]]:
    """Names other than localhost never reach a real resolver in tests; map them here when a test needs one."""
    import socket

    real = socket.getaddrinfo
    hosts: dict[str, list[str]] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name == "localhost" or _is_literal(name):
            return real(host, port, *args, **kwargs)
        if name in hosts:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
                for a in hosts[name]
            ]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return hosts


def _is_literal(name: str) -> bool:
    """An IP literal in any spelling inet_aton accepts (``0x7f.1``, ``2130706433``) or IPv6: no DNS involved."""
    import socket

    try:
        socket.inet_aton(name)
        return True
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, name.split("%")[0])
        return True
    except OSError:
        return False
