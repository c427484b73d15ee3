"""The real stack for the benchmarks: a dedicated PostgreSQL database and Redis db, the sink, Celery, gunicorn.

Every process is started in its own session (process group) and registered here; ``cleanup()`` runs on any
exit (normal, exception, Ctrl-C, SIGTERM) and kills the groups, so nothing is left running.
"""

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Names other people's work on this machine uses: never drop or flush them.
PROTECTED_DATABASES = {
    "hookrelay",
    "hookrelay_h3",
    "hookrelay_h4",
    "hookrelay_h5",
    "postgres",
    "template0",
    "template1",
}
PROTECTED_REDIS_DBS = {11, 12, 13, 14, 15}

_processes: list[subprocess.Popen] = []
_lock = threading.Lock()


class StackError(RuntimeError):
    """A part of the stack did not start or answer."""


def spawn(args: list[str], env: dict[str, str], log: Path | None = None, **kwargs) -> subprocess.Popen:
    """Start a process in its own group and remember it for cleanup."""
    if log is not None:
        handle = log.open("ab")
        kwargs.setdefault("stdout", handle)
        kwargs.setdefault("stderr", subprocess.STDOUT)
    process = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, **kwargs)
    with _lock:
        _processes.append(process)
    return process


def stop_process(process: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Ask the leader to stop (a Celery worker or gunicorn master then stops its children), wait up to
    ``timeout``, then SIGKILL the whole process group, whatever is left of it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    # Children that outlived their leader (a prefork pool child, a gunicorn worker) share its group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with _lock:
        if process in _processes:
            _processes.remove(process)


def cleanup() -> None:
    with _lock:
        remaining = list(_processes)
    for process in reversed(remaining):
        stop_process(process, timeout=5)


def install_signal_handlers() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks and atexit run and clean up the process groups."""

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    # Ctrl-C raises KeyboardInterrupt even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")


# --- configuration ---


@dataclass
class Config:
    database_url: str
    redis_url: str
    workdir: Path
    concurrency: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def database_name(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/")

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment every Hookrelay process of the benchmark runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            SECRET_KEY="bench-only-secret-key-not-for-production",
            DEBUG="false",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            HOOKRELAY_DATA_DIR=str(self.workdir / "data"),
            WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
            # The ingest scenario measures the API, not the rate limiter's refusals.
            API_RATE_LIMIT="100000000/min",
            API_RATE_LIMIT_ANON="100000000/min",
            EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
            ADMINS="",
            PYTHONUNBUFFERED="1",
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(self.extra_env)
        env.update(overrides)
        return env


def check_names(config: Config) -> None:
    name = config.database_name
    if name in PROTECTED_DATABASES or not name.startswith("hookrelay_bench"):
        raise StackError(f"refusing to use database {name!r}: the benchmark database must be named hookrelay_bench*")
    db_index = int(urlsplit(config.redis_url).path.lstrip("/") or 0)
    if db_index in PROTECTED_REDIS_DBS or db_index == 0:
        raise StackError(f"refusing to flush Redis db {db_index}: pick a dedicated one (default 10)")


# --- the servers ---


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def ensure_services(config: Config) -> None:
    """PostgreSQL and Redis on this machine, started as ``.ci/run`` starts them when they are not running."""
    pg = urlsplit(config.database_url)
    pg_host, pg_port = pg.hostname or "127.0.0.1", pg.port or 5432
    if not _answers(pg_host, pg_port) and pg_host == "127.0.0.1" and shutil.which("pg_ctlcluster"):
        versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
        if versions:
            print(f"  starting PostgreSQL {versions[-1].name}", flush=True)
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"], check=False
            )
    redis = urlsplit(config.redis_url)
    redis_host, redis_port = redis.hostname or "127.0.0.1", redis.port or 6379
    if not _answers(redis_host, redis_port) and redis_host == "127.0.0.1" and shutil.which("redis-server"):
        print("  starting Redis", flush=True)
        Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(redis_port)]
            + ["--save", "", "--appendonly", "no", "--dir", "/var/lib/redis"],
            check=False,
        )
    for host, port, what in ((pg_host, pg_port, "PostgreSQL"), (redis_host, redis_port, "Redis")):
        try:
            wait_until(lambda h=host, p=port: _answers(h, p), 30, interval=0.5, what=f"{what} at {host}:{port}")
        except StackError:
            raise StackError(f"{what} does not answer at {host}:{port}; start it and run again") from None


# --- PostgreSQL ---


def _maintenance_connection(config: Config):
    import psycopg

    parts = urlsplit(config.database_url)
    return psycopg.connect(
        dbname="postgres",
        user=parts.username or "postgres",
        password=parts.password or None,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        autocommit=True,
        connect_timeout=10,
    )


def recreate_database(config: Config) -> None:
    """Drop and create the dedicated database, then migrate it with the project's own ``manage.py``."""
    check_names(config)
    name = config.database_name
    with _maintenance_connection(config) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    result = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=config.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise StackError(f"migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def drop_database(config: Config) -> None:
    check_names(config)
    with _maintenance_connection(config) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{config.database_name}" WITH (FORCE)')


def truncate_tables() -> None:
    """Empty every table but the migration bookkeeping (run with no worker or web process running)."""
    from django.db import connection

    keep = {"django_migrations", "django_content_type", "auth_permission"}
    tables = [t for t in connection.introspection.table_names() if t not in keep]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def flush_redis(config: Config) -> None:
    import redis

    check_names(config)
    client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=5)
    client.flushdb()
    client.close()


# --- the sink ---


class Sink:
    def __init__(self, config: Config, slow_delay: float) -> None:
        self.log = config.workdir / "sink.log"
        self.process = spawn(
            [PYTHON, "-m", "bench.sink", "--slow-delay", str(slow_delay)],
            config.env(),
            stdout=subprocess.PIPE,
            stderr=self.log.open("ab"),
        )
        line = self.process.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise StackError(f"sink did not start: {line!r}; see {self.log}")
        self.port = int(line.split()[1])
        self.workdir = config.workdir

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _call(self, method: str, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            response = conn.getresponse()
            return json.loads(response.read())
        finally:
            conn.close()

    def stats(self) -> dict:
        return self._call("GET", "/__stats")

    def count(self) -> int:
        return self.stats()["count"]

    def reset(self) -> None:
        self._call("POST", "/__reset")

    def arrivals(self) -> list[tuple[float, str, str]]:
        """Every recorded request: (arrival unix time, webhook-id, "ok" or "slow")."""
        path = self.workdir / "arrivals.tsv"
        self._call("POST", f"/__dump?path={quote(str(path))}")
        rows = []
        with path.open() as lines:
            for line in lines:
                arrival, webhook_id, kind = line.rstrip("\n").split("\t")
                rows.append((float(arrival), webhook_id, kind))
        path.unlink()
        return rows

    def cpu_seconds(self) -> float:
        return tree_cpu(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)


# --- process measurements ---


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its live descendants (and the children they reaped)."""
    total = 0.0
    for process in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def processes_cpu(names: set[str]) -> dict[int, float]:
    """CPU seconds per process (with its reaped children) for every process named one of ``names``:
    PostgreSQL's postmaster collects the time of backends that have exited. Machine-wide, so other
    databases' work on this machine counts too: a rough figure."""
    found = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] in names and process.info["cpu_times"] is not None:
            t = process.info["cpu_times"]
            found[process.pid] = t.user + t.system + t.children_user + t.children_system
    return found


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process, the kernel's too)."""
    times = psutil.cpu_times()
    # Linux counts a guest's time in user and nice already; idle, I/O wait and steal are not ours.
    return times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


# --- Celery ---


class Worker:
    """``celery -A config worker --beat`` (prefork, ``concurrency`` processes), as in production."""

    def __init__(self, config: Config, name: str, **env: str) -> None:
        self.log = config.workdir / f"worker-{name}.log"
        self.log.write_bytes(b"")
        args = [PYTHON, "-m", "celery", "-A", "config", "worker", "--beat", "--loglevel=INFO", "--pool=prefork"]
        args += [f"--concurrency={config.concurrency}", "--without-mingle", "--without-gossip"]
        self.nodename = f"bench-{name}-{time.time_ns()}@{socket.gethostname()}"
        args += ["-n", self.nodename, f"--schedule={config.workdir / f'beat-{name}'}"]
        self.started = time.time()
        self.process = spawn(args, config.env(**env), log=self.log)
        self.ready_at: float | None = None

    def wait_ready(self, timeout: float = 60.0) -> "Worker":
        def ready() -> bool:
            if self.process.poll() is not None:
                raise StackError(f"worker exited early:\n{self.output()[-3000:]}")
            return "ready." in self.output()

        wait_until(ready, timeout, interval=0.02, what=f"the worker (log {self.log})")
        self.ready_at = time.time()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        """The prefork pool children: the processes that run the tasks (the embedded beat is their sibling).

        Asked of the worker itself (remote control ``stats``); all children when it does not answer.
        """
        from config.celery_app import app

        with contextlib.suppress(Exception):
            stats = app.control.inspect(destination=[self.nodename], timeout=5).stats() or {}
            pids = stats.get(self.nodename, {}).get("pool", {}).get("processes", [])
            if pids:
                return [int(pid) for pid in pids]
        return [process.pid for process in tree(self.process.pid)[1:]]

    def cpu_seconds(self) -> float:
        return tree_cpu(self.process.pid)

    def rss(self) -> dict[int, int]:
        found = {}
        for process in tree(self.process.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                found[process.pid] = process.memory_info().rss
        return found

    def stop(self) -> None:
        # Warm shutdown first (the task in hand finishes), then whatever is left is killed.
        stop_process(self.process, timeout=10)


class RssSampler(threading.Thread):
    """Samples the RSS of every process of a worker tree every ``interval`` seconds until stopped."""

    def __init__(self, worker: Worker, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.interval = interval
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.samples.append((time.time(), self.worker.rss()))

    def stop(self) -> list[tuple[float, dict[int, int]]]:
        self.halt.set()
        self.join(timeout=5)
        return self.samples


# --- gunicorn ---


class Web:
    """``gunicorn config.wsgi`` with ``workers`` workers on 127.0.0.1 (threads as gunicorn.conf.py sets them)."""

    def __init__(self, config: Config, workers: int = 2) -> None:
        self.port = free_port()
        self.log = config.workdir / "gunicorn.log"
        args = [PYTHON, "-m", "gunicorn", "config.wsgi", "--workers", str(workers)]
        args += ["--bind", f"127.0.0.1:{self.port}", "--log-level", "warning"]
        self.process = spawn(args, config.env(), log=self.log)
        self.workers = workers

    def wait_ready(self, timeout: float = 60.0) -> "Web":
        def answers() -> bool:
            if self.process.poll() is not None:
                raise StackError(f"gunicorn exited early:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                conn.close()
                return status == 200
            except OSError:
                return False

        wait_until(answers, timeout, interval=0.1, what="gunicorn /healthz")
        return self

    def cpu_seconds(self) -> float:
        return tree_cpu(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)
