"""Instructions per operation, counted by callgrind: ``python -m bench.instructions [--ops publish,ingest]``.

The timed scenarios move with the machine's load: on a shared 2-core box the same commit's ingest figure
ranged from 277 to 639 requests/s within an hour (issue 6). Callgrind counts the instructions one process
executes, which barely move from run to run (about 0.1 % here), so a change to a hot path can be judged
on its own. Each operation runs twice under ``valgrind --tool=callgrind`` after the same set-up and
warm-up, once with 0 and once with ``--n`` iterations; the difference over ``--n`` is the instructions
per operation in our process. PostgreSQL's and Redis's own work is not counted: the timed scenarios
measure the whole.

- ``publish``: ``webhooks.publish()`` of a 1 KiB event to one subscription (one prepared insert, one ring).
- ``ingest``: ``POST /api/v1/events/`` through ``config.wsgi.application`` in process (no gunicorn),
  with a real token: every middleware, authentication, validation, ``publish()`` and rendering.
- ``deliver``: one delivery of a drain (``deliveries.worker.drain()``, as a worker runs it): claimed,
  signed, sent to the benchmark sink (a process of its own, on 127.0.0.1, not counted) over keep-alive,
  recorded and logged. The backlog (1 KiB events, one subscription) is committed before the measured
  process starts, so the per-delivery figure is the worker's alone.

It uses a database of its own (``hookrelay_bench_instructions``, recreated) and Redis db 10, on 127.0.0.1.
``--plain`` runs the same drivers without valgrind (what CI does: the drivers still work).
"""

import argparse
import atexit
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import stack

OPERATIONS = ("publish", "ingest", "deliver")
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/hookrelay_bench_instructions"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
EVENT_TYPE = "bench.instructions"
DELIVER_TYPE = "bench.instructions.deliver"
WARM_UP = 200
TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def callgrind_total(path: Path) -> int:
    """The instruction count of a callgrind output file (its ``totals:`` line, else ``summary:``)."""
    found = TOTALS.findall(path.read_bytes())
    if not found:
        raise stack.StackError(f"no instruction total in {path}")
    return int(found[-1])


# --- inside the measured process ---


def drive(operation: str, n: int, token: str) -> None:
    """Warm up, then run ``operation`` ``n`` times; exits non-zero if any call did not do its job."""
    import django

    django.setup()
    from bench.publisher import payload

    data = payload(1024, 0)
    if operation == "publish":
        from webhooks import publish

        def once() -> None:
            if publish(EVENT_TYPE, data).delivery_count != 1:
                raise SystemExit("publish() created no delivery")

    elif operation == "deliver":
        from deliveries.models import Delivery, Status
        from deliveries.worker import drain

        drain(budget=600)
        delivered = Delivery.objects.filter(event_type=DELIVER_TYPE, status=Status.SUCCEEDED).count()
        if delivered != WARM_UP + n or Delivery.objects.filter(event_type=DELIVER_TYPE).count() != delivered:
            raise SystemExit(f"the drain delivered {delivered} of {WARM_UP + n}")
        return
    else:
        from config import ratelimit
        from config.wsgi import application

        # The rate limiter remembers a token's client for 30 s of the clock: under valgrind a run outlasts
        # that, and the count then moved with how slow the machine was (1.49 M or 3.16 M instructions).
        ratelimit.TokenClients.TTL = float("inf")

        body = json.dumps({"type": EVENT_TYPE, "data": data}).encode()
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}", "CONTENT_TYPE": "application/json"}

        def once() -> None:
            status, answer = call_wsgi(application, "POST", "/api/v1/events/", body, headers)
            if not status.startswith("202"):
                raise SystemExit(f"POST /api/v1/events/ answered {status}: {answer[:300]!r}")

    # A listener stands in for the worker: each ring is answered as one, instead of queuing a drain task
    # whenever the last one's flag expired (every 5 s of the clock), which made a count move with valgrind's
    # pace (two runs of one commit's publish: 606,273 and 629,100 instructions).
    import redis
    from django.conf import settings

    from deliveries import wake

    store = redis.Redis.from_url(settings.REDIS_URL)
    store.set(wake.LISTENER_KEY, "bench.instructions", ex=3600)
    try:
        for _ in range(WARM_UP + n):
            once()
    finally:
        store.delete(wake.LISTENER_KEY)


def call_wsgi(application, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_ACCEPT": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        **headers,
    }
    statuses: list[str] = []
    answer = application(environ, lambda status, _headers, _exc=None: statuses.append(status))
    try:
        return statuses[0], b"".join(answer)
    finally:
        getattr(answer, "close", lambda: None)()


def backlog(n: int, sink_url: str) -> None:
    """``deliver``: no other delivery of its type, then ``WARM_UP + n`` due ones to the sink, committed."""
    import django

    django.setup()
    from bench.scenarios import create_subscriptions, insert_backlog
    from deliveries.models import Delivery
    from subscriptions.models import Subscription
    from webhooks.models import Event

    Delivery.objects.filter(event_type=DELIVER_TYPE).delete()
    Event.objects.filter(type=DELIVER_TYPE).delete()
    Subscription.objects.filter(url=sink_url).delete()
    insert_backlog(create_subscriptions([sink_url], events=[DELIVER_TYPE]), WARM_UP + n, DELIVER_TYPE)


def prepare() -> str:
    """One subscription for the event type and a bearer token of a new API client; prints the token."""
    import django

    django.setup()
    from base64 import b64encode

    from django.core.management import call_command

    from bench.scenarios import create_subscriptions
    from config.wsgi import application

    create_subscriptions(["http://127.0.0.1:9/instructions"], events=[EVENT_TYPE])
    out = io.StringIO()
    call_command("create_api_client", "bench-instructions", "--scopes", "events.publish", stdout=out)
    client = json.loads(out.getvalue().strip().splitlines()[-1])
    basic = b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    headers = {"HTTP_AUTHORIZATION": f"Basic {basic}", "CONTENT_TYPE": "application/x-www-form-urlencoded"}
    status, answer = call_wsgi(application, "POST", "/oauth/token/", b"grant_type=client_credentials", headers)
    if not status.startswith("200"):
        raise SystemExit(f"token request answered {status}: {answer[:300]!r}")
    return json.loads(answer)["access_token"]


# --- the orchestrator ---


def measure(config: stack.Config, operation: str, n: int, token: str, plain: bool, sink_url: str) -> int | None:
    """Instructions per ``operation`` (None with ``plain``: the drivers only run)."""
    totals = []
    for count in (0, n):
        if operation == "deliver":
            filled = [stack.PYTHON, "-m", "bench.instructions", "--driver", "backlog", "--n", str(count)]
            filled += ["--sink-url", sink_url]
            result = subprocess.run(filled, cwd=stack.ROOT, env=config.env(), capture_output=True, text=True)
            if result.returncode != 0:
                raise stack.StackError(f"backlog for {operation} failed:\n{result.stderr[-3000:]}")
        driver = [stack.PYTHON, "-m", "bench.instructions", "--driver", operation, "--n", str(count)]
        driver += ["--token", token]
        out = config.workdir / f"callgrind-{operation}-{count}.out"
        args = driver if plain else ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *driver]
        result = subprocess.run(args, cwd=stack.ROOT, env=config.env(), capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise stack.StackError(f"{operation} with n={count} failed:\n{result.stderr[-3000:]}")
        if not plain:
            totals.append(callgrind_total(out))
    return None if plain else round((totals[1] - totals[0]) / n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=",".join(OPERATIONS), help=f"comma-separated subset of {OPERATIONS}")
    parser.add_argument("--n", type=int, default=500, help="iterations measured per operation")
    parser.add_argument("--plain", action="store_true", help="run the drivers without valgrind; count nothing")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--drop-database", action="store_true", help="drop the database at the end")
    parser.add_argument("--driver", choices=[*OPERATIONS, "prepare", "backlog"], help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--sink-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.driver == "prepare":
        print(prepare())
        return 0
    if args.driver == "backlog":
        backlog(args.n, args.sink_url)
        return 0
    if args.driver:
        drive(args.driver, args.n, args.token)
        return 0

    operations = [op for op in args.ops.split(",") if op]
    unknown = set(operations) - set(OPERATIONS)
    if unknown or args.n < 1:
        parser.error(f"unknown operations {sorted(unknown)}" if unknown else "--n must be at least 1")
    if not args.plain and not shutil.which("valgrind"):
        parser.error("valgrind is not installed (apt-get install valgrind), or use --plain")
    workdir = Path(tempfile.mkdtemp(prefix="hookrelay-instructions-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    stack.install_signal_handlers()
    atexit.register(stack.cleanup)  # the sink
    config = stack.Config(args.database_url, args.redis_url, workdir, 1)
    stack.ensure_services(config)
    stack.recreate_database(config)
    try:
        prepared = subprocess.run(
            [stack.PYTHON, "-m", "bench.instructions", "--driver", "prepare"],
            cwd=stack.ROOT,
            env=config.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if prepared.returncode != 0:
            raise stack.StackError(f"set-up failed:\n{prepared.stderr[-3000:]}")
        token = prepared.stdout.strip().splitlines()[-1]
        sink = stack.Sink(config, slow_delay=1.0) if "deliver" in operations else None
        for operation in operations:
            per_op = measure(config, operation, args.n, token, args.plain, sink.url("/deliver") if sink else "")
            shown = "ran (not counted: --plain)" if per_op is None else f"{per_op:,} instructions"
            print(f"{operation:8} {shown} per call, over {args.n} calls", flush=True)
    except stack.StackError as exc:
        print(f"bench.instructions: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.drop_database:
            stack.drop_database(config)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.exit(main())
