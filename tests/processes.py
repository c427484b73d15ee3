"""Real server processes for tests: gunicorn or runserver web processes and a private redis-server, on free
127.0.0.1 ports.

Each process runs in its own process group, so stopping it also stops its children (gunicorn workers),
and ``Servers`` stops every one it started, whatever the test did.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    stop_signal = signal.SIGTERM

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal_group(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        # Children left behind by a leader that died first are still in the group.
        self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.handle.close()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.process.args[:4]} exited early:\n{self.output()[-3000:]}")


class HttpServer(Process):
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 30.0) -> "HttpServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                requests.get(self.url("/ready-probe"), timeout=30)  # any answer will do: a 404 touches nothing
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"{self.process.args[:4]} not answering:\n{self.output()[-3000:]}")


class Web(HttpServer):
    """``gunicorn config.wsgi`` on its own port."""

    stop_signal = signal.SIGINT  # gunicorn's quick shutdown

    def __init__(self, env: dict[str, str], log: Path, port: int, workers: int | None, threads: int | None) -> None:
        self.port = port
        args = [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "--no-control-socket"]
        # None leaves the setting to gunicorn.conf.py, as in production.
        args += ["--workers", str(workers)] if workers is not None else []
        args += ["--threads", str(threads)] if threads is not None else []
        args += ["--timeout", "60", "--graceful-timeout", "2"]
        super().__init__(args, env, log)


class RunServer(HttpServer):
    """``python manage.py runserver``, the development server, on its own port and without the autoreloader."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.port = port
        super().__init__([sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], env, log)


class RedisServer(Process):
    """A throwaway ``redis-server``: nothing saved, nothing shared with the Redis other tests use."""

    def __init__(self, log: Path, port: int) -> None:
        self.port = port
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(args, dict(os.environ), log)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def wait_ready(self, timeout: float = 10.0) -> "RedisServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server not answering:\n{self.output()[-3000:]}")


class Servers:
    """Starts processes for one test and stops them all when the test ends, passed or failed."""

    def __init__(self, directory: Path, base_env: dict[str, str]) -> None:
        self.directory = directory
        self.base_env = base_env
        self.started: list[Process] = []

    def web(self, workers: int | None = 1, threads: int | None = 4, port: int | None = None, **env: str) -> Web:
        full_env = {**self.base_env, **env}
        log = self.directory / f"web{len(self.started)}.log"
        web = Web(full_env, log, port or free_port(), workers, threads)
        self.started.append(web)
        web.wait_ready()
        return web

    def runserver(self, port: int | None = None, **env: str) -> RunServer:
        server = RunServer(
            {**self.base_env, **env}, self.directory / f"runserver{len(self.started)}.log", port or free_port()
        )
        self.started.append(server)
        server.wait_ready()
        return server

    def redis(self, port: int | None = None) -> RedisServer:
        server = RedisServer(self.directory / f"redis{len(self.started)}.log", port or free_port())
        self.started.append(server)
        return server.wait_ready()

    def __enter__(self) -> "Servers":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for process in reversed(self.started):
            process.stop()


def web_env(directory: Path, **env: str) -> dict[str, str]:
    """The environment of a web process: this one's, minus what it must not inherit, plus ``env``.

    The test process set PROMETHEUS_MULTIPROC_DIR when it imported the settings; a web process gets
    its own under ``directory`` unless ``env`` names one.
    """
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    metrics_dir = directory / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    defaults = {
        "SECRET_KEY": "test-secret-key-for-web-processes",
        "HOOKRELAY_DATA_DIR": str(directory),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "DATABASE_URL": f"sqlite:///{directory / 'web.sqlite3'}",
    }
    return {**inherited, **defaults, **env}
