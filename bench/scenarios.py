"""The six scenarios of issue 6. Each run returns its figures plus what it checked (``complete``, ``problems``).

Times: a delivery's ``completed_at`` and an attempt's ``started_at`` are written by the worker from its own
clock; the sink stamps arrivals with ``time.time()``; events carry ``created_at`` from the publisher. All
of them run on this machine, so they share one clock.
"""

import json
import os
import resource
import selectors
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import stack
from bench.loadgen import percentile
from bench.publisher import payload

PAYLOAD_BYTES = 1024


@dataclass
class Sizes:
    drain: int
    e2e: int
    e2e_publishers: int
    fanout: int
    latency_rate: float
    latency_seconds: float
    latency_publishers: int
    latency_warmup: int
    isolation_subscriptions: int
    isolation_slow: int
    isolation_events: int
    isolation_timeout: int
    isolation_cap: float
    ingest_seconds: float
    ingest_warmup: float
    ingest_max: int
    ingest_connections: int
    soak: int
    # Upper bounds on waiting for deliveries: a slow engine gives a partial figure, never a hang.
    drain_cap: float
    e2e_cap: float
    fanout_cap: float
    soak_cap: float


FULL = Sizes(
    drain=20_000,
    e2e=20_000,
    e2e_publishers=4,
    fanout=5_000,
    latency_rate=200,
    latency_seconds=30,
    latency_publishers=4,
    latency_warmup=200,
    isolation_subscriptions=100,
    isolation_slow=20,
    isolation_events=200,
    isolation_timeout=2,
    isolation_cap=25,
    ingest_seconds=15,
    ingest_warmup=2,
    ingest_max=200_000,
    ingest_connections=8,
    soak=100_000,
    drain_cap=45,
    e2e_cap=40,
    fanout_cap=60,
    soak_cap=75,
)

QUICK = Sizes(
    drain=300,
    e2e=400,
    e2e_publishers=4,
    fanout=200,
    latency_rate=100,
    latency_seconds=3,
    latency_publishers=2,
    latency_warmup=20,
    isolation_subscriptions=10,
    isolation_slow=2,
    isolation_events=20,
    isolation_timeout=1,
    isolation_cap=60,
    ingest_seconds=30,
    ingest_warmup=0,
    ingest_max=300,
    ingest_connections=4,
    soak=1_000,
    drain_cap=120,
    e2e_cap=120,
    fanout_cap=60,
    soak_cap=120,
)


@dataclass
class Context:
    config: stack.Config
    sink: stack.Sink
    sizes: Sizes
    quick: bool
    profile_dir: Path | None = None
    log: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


@dataclass
class Outcome:
    metrics: dict
    complete: bool = True
    problems: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"metrics": self.metrics, "complete": self.complete, "problems": self.problems, **self.details}


# --- helpers on the database (the harness process has Django set up against the bench database) ---


def fresh(ctx: Context) -> None:
    """Empty tables, broker and sink: every run starts from nothing."""
    stack.truncate_tables()
    stack.flush_redis(ctx.config)
    ctx.sink.reset()


def create_subscriptions(urls: list[str], events: list[str] | None = None) -> list[str]:
    from subscriptions.models import Subscription

    rows = [Subscription(url=url, events=events or ["#"], description="bench") for url in urls]
    Subscription.objects.bulk_create(rows, batch_size=1000)
    return [row.id for row in rows]


# One statement per chunk: the events with one pending, due delivery per subscription each, made by
# PostgreSQL. Ids have the shape of ours (prefix and 24 hex digits), ``data`` is ``payload()``'s object,
# ``created_at`` the clock at each row. Built as model instances and bulk-created, 100,000 rows took
# 37-40 s of each soak run on a slow box (issue 6: ``make bench`` within 15 minutes).
BACKLOG_SQL = """
WITH events AS (
    INSERT INTO webhooks_event (id, type, data, tenant_id, idempotency_scope, idempotency_key,
        request_fingerprint, correlation_id, created_at)
    SELECT 'evt_' || left(md5(random()::text || seq::text), 24), %(type)s,
        jsonb_build_object('seq', seq, 'blob', %(blob)s::text), NULL, '', NULL, '', 'bench-' || seq,
        clock_timestamp()
    FROM generate_series(%(first)s::integer, %(last)s::integer) AS seq
    RETURNING id, created_at
), deliveries AS (
    INSERT INTO deliveries_delivery (id, event_id, subscription_id, event_type, status, attempt_count,
        failures, next_attempt_at, created_at)
    SELECT 'dlv_' || left(md5(random()::text || events.id || s.id), 24), events.id, s.id, %(type)s,
        'pending', 0, 0, events.created_at, events.created_at
    FROM events, unnest(%(subscriptions)s::text[]) AS s(id)
)
SELECT id FROM events
"""


def insert_backlog(subscription_ids: list[str], events: int, event_type: str, chunk: int = 20000) -> list[str]:
    """``events`` committed events with one pending, due delivery per subscription each, as publish() leaves
    them, but inserted in bulk and without waking anybody: the workers are started afterwards."""
    from django.db import connection, transaction

    blob = payload(PAYLOAD_BYTES, 0)["blob"]
    ids: list[str] = []
    per_chunk = max(1, chunk // max(1, len(subscription_ids)))
    for first in range(0, events, per_chunk):
        params = {"type": event_type, "blob": blob, "first": first, "last": min(events, first + per_chunk) - 1}
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(BACKLOG_SQL, params | {"subscriptions": list(subscription_ids)})
            ids.extend(row[0] for row in cursor.fetchall())
    return ids


def delivery_stats(**filters) -> dict:
    from django.db.models import Count, Max, Min, Q

    from deliveries.models import Delivery

    return Delivery.objects.filter(**filters).aggregate(
        total=Count("id"),
        succeeded=Count("id", filter=Q(status="succeeded")),
        failed=Count("id", filter=Q(status="failed")),
        pending=Count("id", filter=Q(status="pending")),
        cancelled=Count("id", filter=Q(status="cancelled")),
        last_success=Max("completed_at", filter=Q(status="succeeded")),
        first_success=Min("completed_at", filter=Q(status="succeeded")),
    )


def first_attempt_started(**filters) -> float | None:
    from django.db.models import Min

    from deliveries.models import Attempt

    value = Attempt.objects.filter(**filters).aggregate(first=Min("started_at"))["first"]
    return value.timestamp() if value else None


def attempt_errors(**filters) -> dict[str, int]:
    from django.db.models import Count

    from deliveries.models import Attempt

    rows = Attempt.objects.filter(success=False, **filters).values("error").annotate(n=Count("id"))
    return {row["error"]: row["n"] for row in rows}


def wait_for_sink(ctx: Context, count: int, cap: float, kind_count=None) -> bool:
    """Poll the sink (cheap, in memory) until ``count`` arrivals or ``cap`` seconds; True when reached."""
    deadline = time.monotonic() + cap
    measure = kind_count or ctx.sink.count
    while time.monotonic() < deadline:
        if measure() >= count:
            return True
        time.sleep(0.05)
    return False


def wait_for_db(expected: int, cap: float, **filters) -> dict:
    """Poll until ``expected`` deliveries are recorded as settled (succeeded or failed) or ``cap`` passes."""
    deadline = time.monotonic() + cap
    while True:
        stats = delivery_stats(**filters)
        if stats["succeeded"] + stats["failed"] >= expected or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def check_arrivals(ctx: Context, expected_ids: set[str], per_id: int = 1) -> tuple[dict, list[str]]:
    """What the sink got against what it should have: every id ``per_id`` times; duplicates are reported."""
    arrivals = [a for a in ctx.sink.arrivals() if a[2] == "ok"]
    counts: dict[str, int] = {}
    for _, webhook_id, _ in arrivals:
        counts[webhook_id] = counts.get(webhook_id, 0) + 1
    missing = [i for i in expected_ids if counts.get(i, 0) < per_id]
    unexpected = [i for i in counts if i not in expected_ids]
    duplicates = sum(max(0, n - per_id) for i, n in counts.items() if i in expected_ids)
    problems = []
    if missing:
        problems.append(f"{len(missing)} events never reached the sink (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected webhook-ids at the sink")
    return {"arrivals": len(arrivals), "missing": len(missing), "duplicates": duplicates}, problems


def failures(stats: dict, what: str) -> list[str]:
    """Deliveries that failed for good: always a problem. Fewer successes than expected within the time
    limit only makes the run incomplete (a slow engine), which fails ``--quick`` alone."""
    return [f"{what}: {stats['failed']} deliveries failed"] if stats["failed"] else []


def warm_up(ctx: Context, count: int = 20) -> None:
    """A few deliveries through a running worker, so its processes have their connections and pools."""
    from webhooks import publish

    create_subscriptions([ctx.sink.url("/warmup")], events=["bench.warmup"])
    before = ctx.sink.count()
    for seq in range(count):
        publish("bench.warmup", payload(64, seq))
        time.sleep(0.02)
    if not wait_for_sink(ctx, before + count, cap=60):
        raise stack.StackError("warm-up deliveries did not arrive within 60 s")
    wait_for_db(count, 30, event_type="bench.warmup")
    ctx.sink.reset()


class Profiler:
    """py-spy attached to a process and its children (a worker and its pool, gunicorn and its workers),
    writing folded stacks; summarised afterwards."""

    def __init__(self, ctx: Context, pid: int, name: str) -> None:
        ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        self.out = ctx.profile_dir / f"{name}.folded"
        self.out.unlink(missing_ok=True)
        self.process = stack.spawn(
            [str(Path(stack.PYTHON).parent / "py-spy"), "record", "--pid", str(pid)]
            + [
                "--subprocesses",
                "--nonblocking",
                "--gil",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(self.out),
            ],
            ctx.config.env(),
            log=ctx.config.workdir / f"py-spy-{name}.log",
        )

    def stop(self) -> Path:
        stack.stop_process(self.process, timeout=30, sig=signal.SIGINT)  # py-spy writes its file on SIGINT
        return self.out


# --- 1. throughput ---


def drain(ctx: Context, profile: bool = False) -> Outcome:
    """N pending deliveries committed, then the workers start; deliveries/s from the first attempt to the
    last recorded success, and CPU seconds of the worker process tree per 1,000 deliveries."""
    n = ctx.sizes.drain
    fresh(ctx)
    subscription = create_subscriptions([ctx.sink.url("/drain")])
    began = time.monotonic()
    ids = set(insert_backlog(subscription, n, "bench.drain"))
    stack.analyze()
    ctx.say(f"drain: {n:,} pending deliveries committed in {time.monotonic() - began:.1f}s; starting the workers")
    launched = time.time()
    worker = stack.Worker(ctx.config, "drain")
    try:
        worker.wait_ready()
        cpu = CpuByRole(worker=worker.cpu_seconds, sink=ctx.sink.cpu_seconds)
        profiler = Profiler(ctx, worker.process.pid, "drain") if profile else None
        reached = wait_for_sink(ctx, n, ctx.sizes.drain_cap)
        stats = wait_for_db(n, 30 if reached else 0)
        taken = cpu.taken()
        folded = profiler.stop() if profiler else None
    finally:
        worker.stop()
    first = first_attempt_started()
    done = stats["succeeded"]
    last = stats["last_success"].timestamp() if stats["last_success"] else time.time()
    elapsed = max(1e-6, last - first) if first else None
    arrivals, problems = check_arrivals(ctx, ids) if reached else ({}, [])
    complete = done == n
    problems = failures(stats, "drain") + problems
    metrics = {
        "drain_per_s": round(done / elapsed, 1) if elapsed else 0.0,
        "cpu_s_per_1000": round(taken["worker"] / done * 1000, 4) if done else None,
    }
    return Outcome(
        metrics,
        complete,
        problems,
        {
            "deliveries": n,
            "succeeded": done,
            "failed": stats["failed"],
            "elapsed_s": round(elapsed, 3) if elapsed else None,
            "worker_ready_s": round(worker.ready_at - launched, 3) if worker.ready_at else None,
            "pickup_s": round(first - worker.ready_at, 3) if first and worker.ready_at else None,
            "worker_cpu_s": taken["worker"],
            "postgres_redis_cpu_s": taken["postgres_redis"],
            "sink_cpu_s": taken["sink"],
            "profiles": {"drain": str(folded)} if folded else {},
            **arrivals,
        },
    )


def read_line(process: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise stack.StackError(f"no answer from {process.args} within {timeout:.0f}s")
    return process.stdout.readline().decode().strip()


def start_publishers(ctx: Context, name: str, specs: list[list[str]]) -> list[subprocess.Popen]:
    publishers = []
    for index, extra in enumerate(specs):
        publishers.append(
            stack.spawn(
                [stack.PYTHON, "-m", "bench.publisher", *extra],
                ctx.config.env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=(ctx.config.workdir / f"publisher-{name}-{index}.log").open("ab"),
            )
        )
    for publisher in publishers:
        line = read_line(publisher, 60)
        if line != "ready":
            raise stack.StackError(f"publisher said {line!r} instead of ready")
    return publishers


def go(publishers: list[subprocess.Popen], at: float) -> None:
    for publisher in publishers:
        publisher.stdin.write(f"go {at}\n".encode())
        publisher.stdin.flush()


def finish_publishers(publishers: list[subprocess.Popen], timeout: float) -> list[dict]:
    results = []
    deadline = time.monotonic() + timeout
    for publisher in publishers:
        line = read_line(publisher, max(1.0, deadline - time.monotonic()))
        results.append(json.loads(line))
        stack.stop_process(publisher)
    return results


class CpuByRole:
    """CPU seconds from now to ``taken()`` of each part of the stack (``parts``: role -> a reading of its
    CPU seconds so far), of PostgreSQL and Redis, and of the whole machine: where a run's CPU goes, and
    whether the machine had any to spare (issue 6)."""

    MACHINE = ("machine", "machine_available")

    def __init__(self, **parts: Callable[[], float]) -> None:
        self.parts = parts
        self.before = {role: read() for role, read in parts.items()}
        self.services_before = stack.processes_cpu({"postgres", "redis-server"})
        self.machine_before = stack.machine_cpu()
        self.started = time.monotonic()

    def taken(self, **reported: float) -> dict[str, float]:
        """``reported``: CPU seconds of parts that have exited by now, as they reported them."""
        elapsed = time.monotonic() - self.started
        taken = reported | {role: read() - self.before[role] for role, read in self.parts.items()}
        taken["postgres_redis"] = stack.cpu_delta(
            self.services_before, stack.processes_cpu({"postgres", "redis-server"})
        )
        taken["machine"] = stack.machine_cpu() - self.machine_before
        taken["machine_available"] = elapsed * (os.cpu_count() or 1)
        return {role: round(seconds, 3) for role, seconds in taken.items()}


def describe_cpu(seconds: dict[str, float], count: int) -> str:
    """``seconds`` from ``CpuByRole.taken()`` per 1,000 of ``count`` (deliveries, requests)."""
    parts = ", ".join(
        f"{role.replace('_', '+')} {value / count * 1000:.2f} s"
        for role, value in seconds.items()
        if role not in CpuByRole.MACHINE
    )
    busy = seconds["machine"] / seconds["machine_available"] if seconds["machine_available"] else 0.0
    return f"{parts}; the machine was busy {busy:.0%} of the time"


def children_cpu() -> float:
    """CPU seconds of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def end_to_end(ctx: Context, profile: bool = False) -> Outcome:
    """N events through publish() by several publisher processes while the workers run: deliveries/s from
    the first publish to the last recorded success. With ``profile``, py-spy samples the worker tree and
    one of the publishers."""
    from webhooks.models import Event

    n, p = ctx.sizes.e2e, ctx.sizes.e2e_publishers
    fresh(ctx)
    worker = stack.Worker(ctx.config, "e2e").wait_ready()
    publishers: list[subprocess.Popen] = []
    try:
        warm_up(ctx)
        create_subscriptions([ctx.sink.url("/e2e")], events=["bench.e2e"])
        counts = [n // p + (1 if i < n % p else 0) for i in range(p)]
        limit = ["--time-limit", str(ctx.sizes.e2e_cap)]
        publishers = start_publishers(ctx, "e2e", [["--count", str(c), "--type", "bench.e2e", *limit] for c in counts])
        profilers = (
            {"e2e-worker": Profiler(ctx, worker.process.pid, "e2e-worker")}
            | {"e2e-publisher": Profiler(ctx, publishers[0].pid, "e2e-publisher")}
            if profile
            else {}
        )
        cpu = CpuByRole(worker=worker.cpu_seconds, sink=ctx.sink.cpu_seconds)
        go(publishers, time.time())
        reached = wait_for_sink(ctx, n, ctx.sizes.e2e_cap)
        published = finish_publishers(publishers, 60)
        stats = wait_for_db(n, 30 if reached else 0, event_type="bench.e2e")
        cpu_by_role = cpu.taken(publishers=sum(result["cpu_s"] for result in published))
        profiles = {name: str(profiler.stop()) for name, profiler in profilers.items()}
    finally:
        for publisher in publishers:
            stack.stop_process(publisher)
        worker.stop()
    events = Event.objects.filter(type="bench.e2e")
    created = sorted(events.values_list("created_at", flat=True))
    start = created[0].timestamp() if created else time.time()
    done = stats["succeeded"]
    last = stats["last_success"].timestamp() if stats["last_success"] else time.time()
    ids = set(events.values_list("id", flat=True))
    arrivals, problems = check_arrivals(ctx, ids) if reached else ({}, [])
    complete = done == n and len(ids) == n
    problems = failures(stats, "end to end") + problems
    published_window = created[-1].timestamp() - start if len(created) > 1 else None
    if done:
        ctx.say(f"end to end: CPU per 1,000 deliveries {describe_cpu(cpu_by_role, done)}")
    return Outcome(
        {"end_to_end_per_s": round(done / max(1e-6, last - start), 1)},
        complete,
        problems,
        {
            "events": len(ids),
            "succeeded": done,
            "failed": stats["failed"],
            "elapsed_s": round(last - start, 3),
            "publish_per_s": round(len(created) / published_window, 1) if published_window else None,
            "publishers": published,
            "cpu_s": cpu_by_role,
            "profiles": profiles,
            **arrivals,
        },
    )


# --- 2. fan-out ---


def fanout(ctx: Context) -> Outcome:
    """One event to N subscriptions: how long publish() takes, and until the last recorded success."""
    from webhooks import publish

    n = ctx.sizes.fanout
    fresh(ctx)
    create_subscriptions([ctx.sink.url(f"/fanout/{i}") for i in range(n)], events=["bench.fanout"])
    stack.analyze()
    worker = stack.Worker(ctx.config, "fanout").wait_ready()
    try:
        warm_up(ctx)
        started = time.time()
        event = publish("bench.fanout", payload(PAYLOAD_BYTES, 0))
        publish_s = time.time() - started
        reached = wait_for_sink(ctx, n, ctx.sizes.fanout_cap)
        stats = wait_for_db(n, 30 if reached else 0, event_id=event.id)
    finally:
        worker.stop()
    done = stats["succeeded"]
    last = stats["last_success"].timestamp() if stats["last_success"] else time.time()
    arrivals, problems = check_arrivals(ctx, {event.id}, per_id=n) if reached else ({}, [])
    complete = done == n and event.delivery_count == n
    problems = failures(stats, "fan-out") + problems
    return Outcome(
        {"all_delivered_s": round(last - started, 3), "publish_s": round(publish_s, 4)},
        complete,
        problems,
        {"subscriptions": n, "deliveries_created": event.delivery_count, "succeeded": done, **arrivals},
    )


# --- 3. latency ---


def latency(ctx: Context) -> Outcome:
    """A steady rate of publish() calls for a while; event created_at to sink arrival, p50/p95/p99."""
    from webhooks.models import Event

    rate, seconds, p = ctx.sizes.latency_rate, ctx.sizes.latency_seconds, ctx.sizes.latency_publishers
    n = int(rate * seconds)
    warm = ctx.sizes.latency_warmup
    fresh(ctx)
    create_subscriptions([ctx.sink.url("/latency")], events=["bench.latency", "bench.warmup"])
    worker = stack.Worker(ctx.config, "latency").wait_ready()
    publishers: list[subprocess.Popen] = []
    try:
        # Publisher k publishes events k, k + p, k + 2p, ... of one steady stream at ``rate``.
        specs = [
            ["--count", str(n // p + (1 if k < n % p else 0)), "--type", "bench.latency"]
            + ["--rate", str(rate / p), "--phase", str(k / rate), "--warmup", str(warm // p)]
            for k in range(p)
        ]
        publishers = start_publishers(ctx, "latency", specs)
        go(publishers, time.time() + 0.2)
        expected = n + (warm // p) * p
        reached = wait_for_sink(ctx, expected, seconds + warm / rate + 60)
        published = finish_publishers(publishers, 60)
        stats = wait_for_db(n, 30 if reached else 0, event_type="bench.latency")
    finally:
        for publisher in publishers:
            stack.stop_process(publisher)
        worker.stop()
    created = {
        event_id: created_at.timestamp()
        for event_id, created_at in Event.objects.filter(type="bench.latency").values_list("id", "created_at")
    }
    arrived: dict[str, float] = {}
    for arrival, webhook_id, kind in ctx.sink.arrivals():
        if kind == "ok" and webhook_id in created:
            arrived.setdefault(webhook_id, arrival)
    latencies = [(arrived[i] - created[i]) * 1000 for i in arrived]
    complete = len(arrived) == n == len(created) and stats["succeeded"] == n
    problems = failures(stats, "latency")
    times = sorted(created.values())
    achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    return Outcome(
        {
            "p50_ms": _round(percentile(latencies, 0.50)),
            "p95_ms": _round(percentile(latencies, 0.95)),
            "p99_ms": _round(percentile(latencies, 0.99)),
        },
        complete,
        problems,
        {
            "events": len(created),
            "delivered": len(arrived),
            "target_rate": rate,
            "achieved_rate": _round(achieved),
            "max_ms": _round(max(latencies) if latencies else None),
            "publishers": published,
        },
    )


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- 4. isolation ---


def isolation_phase(ctx: Context, slow: bool, profile: bool = False) -> dict:
    """A backlog of events to every subscription; the healthy ones' deliveries per second. With ``profile``,
    py-spy samples the worker tree until the healthy deliveries are done."""
    sizes = ctx.sizes
    total, bad = sizes.isolation_subscriptions, sizes.isolation_slow
    fresh(ctx)
    healthy = create_subscriptions([ctx.sink.url(f"/iso/{i}") for i in range(total - bad)])
    path = "/slow" if slow else "/iso"
    others = create_subscriptions([ctx.sink.url(f"{path}/{i}") for i in range(total - bad, total)])
    insert_backlog(healthy + others, sizes.isolation_events, "bench.isolation")
    stack.analyze()
    expected = sizes.isolation_events * len(healthy)
    worker = stack.Worker(
        ctx.config, "isolation-slow" if slow else "isolation", WEBHOOK_TIMEOUT=str(sizes.isolation_timeout)
    )
    try:
        worker.wait_ready()
        name = "isolation-slow" if slow else "isolation-healthy"
        profiler = Profiler(ctx, worker.process.pid, name) if profile else None
        # The sink counts the answered arrivals: with slow endpoints those are the healthy ones only.
        arrivals = expected if slow else sizes.isolation_events * total
        reached = wait_for_sink(ctx, arrivals, sizes.isolation_cap)
        stats = wait_for_db(expected, 30 if reached else 0, subscription_id__in=healthy)
        stopped_at = time.time()
        folded = profiler.stop() if profiler else None
        # The slow endpoints' attempts end at the timeout, in the slow lane, after the healthy ones are
        # done: wait for each to have one (this is not part of the healthy figure).
        other_expected = sizes.isolation_events * len(others)
        slow_attempted = wait_for_attempts(others, other_expected, sizes.isolation_cap)
        all_stats = delivery_stats()
        errors = attempt_errors(delivery__subscription_id__in=others)
    finally:
        worker.stop()
    first = first_attempt_started()
    done = stats["succeeded"]
    complete = done == expected
    last = stats["last_success"].timestamp() if complete and stats["last_success"] else stopped_at
    elapsed = max(1e-6, last - first) if first else None
    return {
        "healthy_per_s": round(done / elapsed, 1) if elapsed else 0.0,
        "healthy_expected": expected,
        "healthy_succeeded": done,
        "healthy_failed": stats["failed"],
        "all_failed": all_stats["failed"],
        "elapsed_s": round(elapsed, 3) if elapsed else None,
        "complete": complete,
        "capped_at_s": None if complete else sizes.isolation_cap,
        "other_errors": errors,
        "other_attempted": slow_attempted,
        "other_expected": other_expected,
        "profiles": {name: str(folded)} if folded else {},
    }


def wait_for_attempts(subscription_ids: list[str], expected: int, cap: float) -> int:
    """Poll until ``expected`` of these subscriptions' deliveries have an attempt, or ``cap`` passes."""
    deadline = time.monotonic() + cap
    while True:
        attempted = len(set(attempt_ids(subscription_ids)))
        if attempted >= expected or time.monotonic() > deadline:
            return attempted
        time.sleep(0.1)


def attempt_ids(subscription_ids: list[str]) -> list[str]:
    from deliveries.models import Attempt

    return list(
        Attempt.objects.filter(delivery__subscription_id__in=subscription_ids).values_list("delivery_id", flat=True)
    )


def isolation(ctx: Context, profile: bool = False) -> Outcome:
    """Healthy endpoints' throughput with some endpoints answering only after the timeout, as a fraction of
    the same endpoints' throughput when every endpoint is healthy."""
    baseline = isolation_phase(ctx, slow=False, profile=profile)
    degraded = isolation_phase(ctx, slow=True, profile=profile)
    fraction = degraded["healthy_per_s"] / baseline["healthy_per_s"] if baseline["healthy_per_s"] else 0.0
    problems = []
    if baseline["all_failed"] or degraded["healthy_failed"] or degraded["all_failed"]:
        problems.append("isolation: some deliveries failed for good")
    if ctx.quick:
        unexpected = {e: n for e, n in degraded["other_errors"].items() if e != "timeout"}
        if unexpected:
            problems.append(f"isolation: slow endpoints failed with {unexpected}, expected only timeouts")
        if degraded["other_attempted"] < degraded["other_expected"]:
            problems.append(
                f"isolation: {degraded['other_attempted']} of {degraded['other_expected']} slow deliveries attempted"
            )
    return Outcome(
        {"healthy_fraction": round(fraction, 4)},
        baseline["complete"] and degraded["complete"],
        problems,
        {
            "baseline": baseline,
            "degraded": degraded,
            "timeout_s": ctx.sizes.isolation_timeout,
            "profiles": baseline.pop("profiles") | degraded.pop("profiles"),
        },
    )


# --- 5. ingest ---


def ingest(ctx: Context, profile: bool = False) -> Outcome:
    """POST /api/v1/events/ requests per second against gunicorn with 2 workers (no Celery worker running:
    the events and their pending deliveries are only written)."""
    import http.client
    from base64 import b64encode

    from deliveries.models import Delivery
    from webhooks.models import Event

    sizes = ctx.sizes
    fresh(ctx)
    create_subscriptions([ctx.sink.url("/ingest")], events=["bench.ingest"])
    created = subprocess.run(
        [stack.PYTHON, "manage.py", "create_api_client", "bench-ingest", "--scopes", "events.publish"],
        cwd=stack.ROOT,
        env=ctx.config.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    client = json.loads(created.stdout.strip().splitlines()[-1])
    web = stack.Web(ctx.config, workers=2).wait_ready()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
        basic = b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
        conn.request(
            "POST",
            "/oauth/token/",
            body="grant_type=client_credentials",
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status != 200:
            raise stack.StackError(f"token request answered {response.status}: {body[:300]!r}")
        token = json.loads(body)["access_token"]
        cpu = CpuByRole(gunicorn=web.cpu_seconds, loadgen=children_cpu)
        profiler = Profiler(ctx, web.process.pid, "ingest") if profile else None
        load = subprocess.run(
            [stack.PYTHON, "-m", "bench.loadgen", "--port", str(web.port), "--token", token]
            + ["--connections", str(sizes.ingest_connections), "--duration", str(sizes.ingest_seconds)]
            + ["--warmup", str(sizes.ingest_warmup), "--max-requests", str(sizes.ingest_max)],
            cwd=stack.ROOT,
            env=ctx.config.env(),
            capture_output=True,
            text=True,
            timeout=sizes.ingest_seconds + sizes.ingest_warmup + 120,
        )
        cpu_by_role = cpu.taken()
        folded = profiler.stop() if profiler else None
    finally:
        web.stop()
    if load.returncode != 0:
        raise stack.StackError(f"load generator failed: {load.stderr[-2000:]}")
    result = json.loads(load.stdout.strip().splitlines()[-1])
    accepted = result["statuses"].get("202", 0)
    events = Event.objects.filter(type="bench.ingest").count()
    deliveries = Delivery.objects.filter(event_type="bench.ingest", status="pending").count()
    problems = []
    other = {status: n for status, n in result["statuses"].items() if status != "202"}
    if other or result["errors"]:
        problems.append(f"ingest: answers other than 202: {other}, errors {result['errors']}")
    if events != accepted or deliveries != accepted:
        problems.append(f"ingest: {accepted} accepted, but {events} events and {deliveries} pending deliveries stored")
    measured = result["measured_requests"]
    if result["requests"]:
        ctx.say(f"ingest: CPU per 1,000 requests {describe_cpu(cpu_by_role, result['requests'])}")
    return Outcome(
        {"requests_per_s": result["requests_per_s"] if measured else None},
        not problems,
        problems,
        {
            **result,
            "gunicorn_workers": 2,
            "gunicorn_cpu_s": cpu_by_role["gunicorn"],
            "cpu_s": cpu_by_role,
            "events_stored": events,
            "profiles": {"ingest": str(folded)} if folded else {},
        },
    )


# --- 6. soak ---


def soak(ctx: Context) -> Outcome:
    """A long drain: the workers' peak RSS and its growth between the first and the last quarter."""
    n = ctx.sizes.soak
    fresh(ctx)
    subscription = create_subscriptions([ctx.sink.url("/soak")])
    began = time.monotonic()
    insert_backlog(subscription, n, "bench.soak")
    stack.analyze()
    ctx.say(f"soak: {n:,} pending deliveries committed in {time.monotonic() - began:.1f}s; starting the workers")
    worker = stack.Worker(ctx.config, "soak").wait_ready()
    try:
        sampler = stack.RssSampler(worker)
        sampler.start()
        pool = worker.pool_pids()
        reached = wait_for_sink(ctx, n, ctx.sizes.soak_cap)
        stats = wait_for_db(n, 30 if reached else 0)
        samples = sampler.stop()
    finally:
        worker.stop()
    first = first_attempt_started()
    done = stats["succeeded"]
    complete = done == n
    last = stats["last_success"].timestamp() if complete and stats["last_success"] else samples[-1][0]
    window = [(t, rss) for t, rss in samples if first and first <= t <= last]
    problems = failures(stats, "soak")
    mb = 1024 * 1024
    pool_sum = [sum(rss.get(pid, 0) for pid in pool) for _, rss in window]
    quarter = max(1, len(window) // 4)
    first_q = statistics.mean(pool_sum[:quarter]) if pool_sum else 0
    last_q = statistics.mean(pool_sum[-quarter:]) if pool_sum else 0
    peak_child = max((max((rss.get(pid, 0) for pid in pool), default=0) for _, rss in samples), default=0)
    peak_tree = max((sum(rss.values()) for _, rss in samples), default=0)
    return Outcome(
        {
            "rss_growth_pct": round((last_q - first_q) / first_q * 100, 2) if first_q else None,
            "peak_rss_mb": round(peak_child / mb, 1),
        },
        complete,
        problems,
        {
            "deliveries": n,
            "succeeded": done,
            "elapsed_s": round(last - first, 3) if first else None,
            "per_s": round(done / (last - first), 1) if first and last > first else None,
            "pool_processes": len(pool),
            "pool_rss_first_quarter_mb": round(first_q / mb, 1),
            "pool_rss_last_quarter_mb": round(last_q / mb, 1),
            "tree_peak_rss_mb": round(peak_tree / mb, 1),
            "samples": len(window),
        },
    )


# --- the table of scenarios ---

SCENARIOS = ["throughput", "fanout", "latency", "isolation", "ingest", "soak"]


def throughput(ctx: Context) -> Outcome:
    first = drain(ctx)
    second = end_to_end(ctx)
    return Outcome(
        {**first.metrics, **second.metrics},
        first.complete and second.complete,
        first.problems + second.problems,
        {"drain": first.as_dict(), "end_to_end": second.as_dict()},
    )


RUNNERS = {
    "throughput": throughput,
    "fanout": fanout,
    "latency": latency,
    "isolation": isolation,
    "ingest": ingest,
    "soak": soak,
}


def profiled(ctx: Context, name: str) -> Outcome:
    """An extra run under py-spy (not counted in the figures: sampling costs the profiled processes time)."""
    return {"drain": drain, "end_to_end": end_to_end, "isolation": isolation, "ingest": ingest}[name](ctx, profile=True)
