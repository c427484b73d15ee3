"""The README's walk-through, run as a newcomer pastes it, on a fresh data directory with nothing set.

The walk-through's shell blocks carry a tag after the language: ```` ```sh terminal-1 ```` is ``make run``
(started here the way ``make run`` starts it: migrate, then every process of the ``Procfile``),
```` ```sh terminal-2 ```` is the local receiver (run as written, on a free port), and every
```` ```sh terminal-3 ```` block runs in order in one bash, as in one terminal. Blocks with any other
tag (the admin's interactive steps) are skipped. Ports 8000, 9000 and 9999 are replaced by free ones.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.processes import ROOT, Process, free_port

README = ROOT / "README.md"
SECTION = "## Five-minute walk-through"
# What `make run` started before the Procfile existed; the Procfile's own lines win when it is there.
FALLBACK_PROCESSES = {
    "web": "python manage.py runserver 127.0.0.1:${WEB_PORT:-8000}",
    "worker": "celery -A config worker --concurrency=1",
    "scheduler": 'celery -A config beat --schedule="$HOOKRELAY_DATA_DIR/celerybeat-schedule"',
}
# Every webhook the terminal-3 blocks cause, as the receiver prints its X-Webhook-Event header.
EXPECTED_EVENTS = ["webhook.ping", "order.created", "order.paid", "order.shipped"]


@dataclass
class Block:
    tag: str
    text: str


@dataclass
class Ports:
    web: int
    receiver: int
    closed: int

    def substitute(self, text: str) -> str:
        for documented, actual in (("8000", self.web), ("9000", self.receiver), ("9999", self.closed)):
            text = re.sub(rf"(?<![0-9]){documented}(?![0-9])", str(actual), text)
        return text


def walkthrough_blocks(readme: str) -> list[Block]:
    """The fenced ``sh`` blocks between the walk-through's heading and the next heading of its level."""
    start = readme.index(SECTION) + len(SECTION)
    following = readme.find("\n## ", start)
    section = readme[start : following if following != -1 else len(readme)]
    return [Block(tag, text) for tag, text in re.findall(r"^```sh[ \t]*(\S*)[ \t]*\n(.*?)^```", section, re.S | re.M)]


def procfile_commands() -> dict[str, str]:
    procfile = ROOT / "Procfile"
    if not procfile.exists():
        return dict(FALLBACK_PROCESSES)
    commands = {}
    for line in procfile.read_text().splitlines():
        name, separator, command = line.partition(":")
        if separator and name.strip() and not name.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def missing_tool() -> str | None:
    for tool in ("bash", "curl", "python3"):
        if shutil.which(tool) is None:
            return f"the walk-through needs `{tool}` on PATH"
    if not (ROOT / ".venv" / "bin" / "python").exists():
        return "the walk-through calls .venv/bin/python, and there is no .venv in the project folder"
    return None


def strict_curl() -> str:
    """A ``curl`` that fails on an HTTP error, as a newcomer would see the step fail in its output."""
    help_text = subprocess.run(["curl", "--help", "all"], capture_output=True, text=True).stdout
    option = "--fail-with-body" if "--fail-with-body" in help_text else "--fail"
    return f'curl() {{ command curl {option} "$@"; }}\n'


def newcomer_env(data_dir: Path, web_port: int) -> dict[str, str]:
    """A shell with nothing of ours set, but for the temporary data directory and database."""
    ours = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE")
    env = {name: value for name, value in os.environ.items() if name not in ours and not name.startswith("WEBHOOK_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOOKRELAY_DATA_DIR=str(data_dir),
        DATABASE_URL=f"sqlite:///{data_dir / 'db.sqlite3'}",
        WEB_PORT=str(web_port),
        PYTHONUNBUFFERED="1",
    )
    return env


def shell(command: str, env: dict[str, str], log: Path) -> Process:
    return Process(["bash", "-c", command], env, log)


def wait_until_answering(url: str, processes: list[Process], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            process.check_alive()
        try:
            requests.get(url, timeout=5)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answers at {url}")


def wait_for_events(log: Path, events: list[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if all(f"X-Webhook-Event: {event}" in output for event in events):
            return output
        time.sleep(0.2)
    raise AssertionError(f"the receiver did not get all of {events}:\n{log.read_text(errors='replace')[-4000:]}")


def first_request(receiver_output: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of the first request the receiver printed (its request line, headers, blank line, body)."""
    request = receiver_output[receiver_output.index("POST ") :]
    head, _, rest = request.partition("\n\n")
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    return headers, rest.split("\n", 1)[0].encode()


def readme_verify() -> Callable[..., bool]:
    """The ``verify()`` the README offers subscribers, taken from its Python block."""
    readme = README.read_text()
    section = readme[readme.index("## Verifying a webhook") :]
    namespace: dict[str, object] = {}
    exec(re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1), namespace)  # noqa: S102 - our own README
    return namespace["verify"]


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in reversed(processes):
        process.stop()


def test_the_blocks_are_tagged_so_this_test_finds_them() -> None:
    blocks = walkthrough_blocks(README.read_text())
    tags = [block.tag for block in blocks]
    assert tags.count("terminal-1") == 1 and tags.count("terminal-2") == 1
    assert tags.count("terminal-3") >= 5
    assert "make run" in blocks[tags.index("terminal-1")].text
    assert "tests.receiver --port 9000" in blocks[tags.index("terminal-2")].text


@pytest.mark.timeout(300)
def test_the_walkthrough_runs_as_pasted(tmp_path: Path, started: list[Process]) -> None:
    reason = missing_tool()
    if reason:
        pytest.skip(reason)
    blocks = walkthrough_blocks(README.read_text())
    ports = Ports(web=free_port(), receiver=free_port(), closed=free_port())
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = newcomer_env(data_dir, ports.web)
    terminal_1 = next(block.text for block in blocks if block.tag == "terminal-1")
    env.update(re.findall(r"^\s*([A-Z_]+)=(\S+) make run", terminal_1, re.M))

    python = str(ROOT / ".venv" / "bin" / "python")
    migrate = subprocess.run(
        [python, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    for name, command in procfile_commands().items():
        started.append(shell(command, env, tmp_path / f"{name}.log"))
    receiver_log = tmp_path / "receiver.log"
    terminal_2 = next(block.text for block in blocks if block.tag == "terminal-2")
    started.append(shell(ports.substitute(terminal_2), env, receiver_log))
    wait_until_answering(f"http://127.0.0.1:{ports.web}/healthz", started)
    wait_until_answering(f"http://127.0.0.1:{ports.receiver}/", started)

    script = "\n".join(ports.substitute(block.text) for block in blocks if block.tag == "terminal-3")
    strict = "set -euo pipefail\n" + strict_curl()
    terminal_3 = subprocess.run(
        ["bash", "-c", strict + script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert terminal_3.returncode == 0, f"stdout:\n{terminal_3.stdout[-3000:]}\nstderr:\n{terminal_3.stderr[-3000:]}"
    assert '"success":true,"status_code":200' in terminal_3.stdout
    assert '"requeued":1' in terminal_3.stdout
    received = wait_for_events(receiver_log, EXPECTED_EVENTS)
    secret = re.search(r'"secret":"(whsec_[^"]+)"', terminal_3.stdout).group(1)
    headers, body = first_request(received)
    assert readme_verify()(secret, headers, body), "the README's verify() refuses the ping it was sent"
    for process in started:
        process.check_alive()
