"""The worker loop: claim due rows with a lease, send outside any transaction, record the batch.

DESIGN.md sections 3 and 6: the claim is one autocommit UPDATE, so the lease is committed before any
HTTP call; a worker killed mid-send leaves a lease that expires and the sweeper hands the row out again.
"""

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from config import metrics
from deliveries import actions, alerts, sender
from deliveries.models import Attempt, Delivery, Status
from deliveries.sender import Message, Result
from deliveries.wake import clear_wake, wake
from subscriptions.models import Subscription

logger = logging.getLogger("hookrelay.deliveries")
DRAIN_BUDGET_SECONDS = 10.0
GONE_REASON = "endpoint answered 410 Gone"
# PostgreSQL: the CTE runs once. An "id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)" form can be
# rescanned by a nested-loop semi-join, and with SKIP LOCKED each rescan finds new rows: measured here,
# claim(20) leased 300 rows that way.
CLAIM_SQL_POSTGRESQL = (
    "WITH due AS (SELECT id FROM deliveries_delivery WHERE status = %(pending)s AND next_attempt_at <= %(now)s "
    "ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    "UPDATE deliveries_delivery AS d SET next_attempt_at = %(lease_until)s, attempt_count = d.attempt_count + 1 "
    "FROM due WHERE d.id = due.id RETURNING d.id, d.attempt_count"
)
# SQLite serialises writers and evaluates the subquery once; the repeated condition keeps it honest.
SAVE_OUTCOMES_SQL = (
    "WITH v(id, number, status, next_attempt_at, completed_at, failures, last_error, last_status_code) "
    "AS (VALUES {rows}) "
    "UPDATE deliveries_delivery SET status = v.status, next_attempt_at = v.next_attempt_at, "
    "completed_at = v.completed_at, failures = v.failures, last_error = v.last_error, "
    "last_status_code = v.last_status_code FROM v "
    "WHERE deliveries_delivery.id = v.id AND deliveries_delivery.attempt_count = v.number "
    "AND deliveries_delivery.status = %s RETURNING deliveries_delivery.id"
)
CLAIM_SQL_SQLITE = (
    "UPDATE deliveries_delivery SET next_attempt_at = %(lease_until)s, attempt_count = attempt_count + 1 "
    "WHERE id IN (SELECT id FROM deliveries_delivery WHERE status = %(pending)s AND next_attempt_at <= %(now)s "
    "ORDER BY next_attempt_at LIMIT %(limit)s) "
    "AND status = %(pending)s AND next_attempt_at <= %(now)s RETURNING id, attempt_count"
)


def lease_seconds() -> int:
    """Long enough for one attempt (connect and read) plus the margin a batch needs to get to it."""
    return 2 * settings.WEBHOOK_TIMEOUT + settings.WEBHOOK_LEASE_MARGIN


def claim(limit: int) -> dict[str, int]:
    """Lease up to ``limit`` due deliveries; returns {delivery id: the attempt number this claim took}.

    On PostgreSQL ``SKIP LOCKED`` lets workers pass each other; on SQLite a conditional UPDATE does
    the same job (DESIGN.md section 7).
    """
    now = timezone.now()
    sql = CLAIM_SQL_POSTGRESQL if connection.vendor == "postgresql" else CLAIM_SQL_SQLITE
    params = {
        "pending": Status.PENDING,
        "now": connection.ops.adapt_datetimefield_value(now),
        "lease_until": connection.ops.adapt_datetimefield_value(now + timedelta(seconds=lease_seconds())),
        "limit": limit,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


@dataclass
class Job:
    delivery: Delivery
    number: int
    result: Result | None = None


def drain(budget: float = DRAIN_BUDGET_SECONDS) -> int:
    """Deliver what is due now, batch after batch while batches come back full; re-queue when out of time."""
    clear_wake()
    deadline = time.monotonic() + budget
    total = 0
    while True:
        count = deliver_batch()
        total += count
        if count < settings.WEBHOOK_BATCH_SIZE:
            return total
        if time.monotonic() > deadline:
            wake()
            return total


def deliver_batch(limit: int | None = None) -> int:
    limit = limit or settings.WEBHOOK_BATCH_SIZE
    claimed = claim(limit)
    if not claimed:
        return 0
    if len(claimed) == limit:
        wake()  # probably more due: another worker process can claim the next batch while this one sends
    send_deadline = time.monotonic() + settings.WEBHOOK_LEASE_MARGIN
    deliveries = Delivery.objects.filter(id__in=claimed).select_related("event", "subscription")
    jobs = [Job(d, claimed[d.id]) for d in deliveries]
    sendable = [job for job in jobs if job.delivery.subscription.is_active]
    _send_all(sendable, send_deadline)
    _release_unsent([job for job in sendable if job.result is None])
    _settle_inactive([job for job in jobs if not job.delivery.subscription.is_active])
    record([job for job in sendable if job.result is not None])
    return len(claimed)


_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=settings.WEBHOOK_SEND_CONCURRENCY, thread_name_prefix="send")
    return _executor


def _send_all(jobs: list[Job], send_deadline: float) -> None:
    bodies: dict[str, bytes] = {}

    def run(job: Job) -> None:
        # A send that could not start in time would outlive its lease: leave it for the next claim.
        if time.monotonic() < send_deadline:
            job.result = sender.send(message_for(job, bodies))

    list(_pool().map(run, jobs))


def message_for(job: Job, bodies: dict[str, bytes]) -> Message:
    delivery = job.delivery
    event = delivery.event
    if event.id not in bodies:
        bodies[event.id] = sender.encode_body(event.payload())
    return Message(
        url=delivery.subscription.url,
        msg_id=event.id,
        event_type=event.type,
        body=bodies[event.id],
        secrets=delivery.subscription.signing_secrets(),
        attempt=job.number,
        correlation_id=event.correlation_id or event.id,
    )


def _release_unsent(jobs: list[Job]) -> None:
    for job in jobs:
        Delivery.objects.filter(pk=job.delivery.pk, status=Status.PENDING, attempt_count=job.number).update(
            attempt_count=job.number - 1, next_attempt_at=timezone.now()
        )


def _settle_inactive(jobs: list[Job]) -> None:
    """A row claimed after its subscription went inactive: deleted ones cancel, disabled ones fail."""
    for job in jobs:
        row = Delivery.objects.filter(pk=job.delivery.pk)
        with transaction.atomic():
            if not row.filter(attempt_count=job.number).update(attempt_count=job.number - 1):
                continue
            if job.delivery.subscription.is_deleted:
                row.filter(status=Status.PENDING).update(
                    status=Status.CANCELLED, next_attempt_at=None, completed_at=timezone.now()
                )
            else:
                actions.fail_pending(row, actions.SUBSCRIPTION_DISABLED)


@dataclass
class Aftermath:
    """Subscription bookkeeping, done after the batch commits so the batch never waits on it."""

    succeeded: set[str]
    failed_for_good: list[Delivery]
    gone: list[Delivery]


def record(jobs: list[Job]) -> None:
    """Record a batch in one transaction: the attempts in one insert, the deliveries in one update."""
    if not jobs:
        return
    jobs = sorted(jobs, key=lambda j: j.delivery.pk)
    for job in jobs:
        _move_on(job)
    with transaction.atomic():
        Attempt.objects.bulk_create(Attempt.from_result(job.delivery.pk, job.number, job.result) for job in jobs)
        ours = save_outcomes(jobs)
    _observe(jobs)
    _settle_subscriptions(_aftermath([job for job in jobs if job.delivery.pk in ours]))


def _move_on(job: Job) -> None:
    """Set the delivery's next state from its attempt: succeeded, due again after a delay, or failed."""
    delivery, result = job.delivery, job.result
    finished_at = result.started_at + timedelta(milliseconds=result.duration_ms)
    delivery.attempt_count, delivery.last_error, delivery.last_status_code = (
        job.number,
        result.error,
        result.status_code,
    )
    if result.success:
        delivery.status, delivery.next_attempt_at, delivery.completed_at = Status.SUCCEEDED, None, finished_at
        return
    delivery.failures += 1
    delay = None if result.status_code == 410 else delivery.retry_delay()
    if delay is not None:
        delivery.next_attempt_at = finished_at + delay
    else:
        delivery.status, delivery.next_attempt_at, delivery.completed_at = Status.FAILED, None, finished_at


def save_outcomes(jobs: list[Job]) -> set[str]:
    """Write every job's new state where the row is still ours (pending, same attempt number).

    Returns the ids written: a row a late worker no longer owns (redelivered, disabled, cancelled)
    keeps the newer state.
    """
    cast = (lambda kind: f"CAST(%s AS {kind})") if connection.vendor == "postgresql" else (lambda kind: "%s")
    row = f"(%s, %s, %s, {cast('timestamptz')}, {cast('timestamptz')}, %s, {cast('text')}, {cast('smallint')})"
    params: list = []
    for job in jobs:
        d = job.delivery
        params += [d.pk, job.number, d.status, _db_time(d.next_attempt_at), _db_time(d.completed_at)]
        params += [d.failures, d.last_error, d.last_status_code]
    sql = SAVE_OUTCOMES_SQL.format(rows=", ".join([row] * len(jobs)))
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, Status.PENDING])
        return {pk for (pk,) in cursor.fetchall()}


def _db_time(value: datetime | None):
    return connection.ops.adapt_datetimefield_value(value) if value else None


def _aftermath(jobs: list[Job]) -> Aftermath:
    aftermath = Aftermath(set(), [], [])
    for job in jobs:
        delivery = job.delivery
        if delivery.status == Status.SUCCEEDED:
            aftermath.succeeded.add(delivery.subscription_id)
        elif delivery.status == Status.FAILED:
            (aftermath.gone if delivery.last_status_code == 410 else aftermath.failed_for_good).append(delivery)
    return aftermath


def _settle_subscriptions(aftermath: Aftermath) -> None:
    if aftermath.succeeded:
        Subscription.objects.filter(id__in=sorted(aftermath.succeeded)).update(
            consecutive_failures=0, last_success_at=timezone.now()
        )
    for delivery in aftermath.gone:
        actions.disable_subscription(delivery.subscription, GONE_REASON)
    for delivery in aftermath.failed_for_good:
        _count_failure(delivery.subscription)
    for delivery in aftermath.gone + aftermath.failed_for_good:
        alerts.delivery_failed(delivery)


def _count_failure(subscription: Subscription) -> None:
    Subscription.objects.filter(pk=subscription.pk).update(consecutive_failures=F("consecutive_failures") + 1)
    subscription.refresh_from_db(fields=["consecutive_failures", "is_active"])
    limit = settings.WEBHOOK_DISABLE_AFTER
    if subscription.is_active and limit and subscription.consecutive_failures >= limit:
        actions.disable_subscription(subscription, f"{subscription.consecutive_failures} consecutive failed deliveries")


def _observe(jobs: list[Job]) -> None:
    """One log line per attempt, and the batch's metrics (CONTRACT.md section 3, Operations)."""
    counts: Counter[tuple[str, str]] = Counter()
    for job in jobs:
        result = job.result
        outcome = "success" if result.success else "failure"
        counts[outcome, metrics.status_class(result.status_code)] += 1
        metrics.ATTEMPT_DURATION.observe(result.duration_ms / 1000)
        if result.success:
            latency = job.delivery.completed_at - job.delivery.event.created_at
            metrics.DELIVERY_LATENCY.observe(max(0.0, latency.total_seconds()))
        _log_attempt(job, outcome)
    for labels, count in counts.items():
        metrics.ATTEMPTS.labels(*labels).inc(count)


def _log_attempt(job: Job, outcome: str) -> None:
    delivery, result = job.delivery, job.result
    fields = {
        "event": delivery.event_id,
        "delivery": delivery.id,
        "subscription": delivery.subscription_id,
        "attempt": job.number,
        "outcome": outcome,
        "status": result.status_code,
        "duration_ms": result.duration_ms,
        "error": result.error,
        "url": sender.safe_url(delivery.subscription.url),
        "correlation_id": delivery.event.correlation_id or "-",
    }
    words = " ".join(f"{name}={value!r}" if name == "error" else f"{name}={value}" for name, value in fields.items())
    logger.info(f"attempt {words}", extra=fields)


def sweep(max_drains: int = 4) -> int:
    """Wake workers for every due row: retries, expired leases, and anything whose wake-up was lost."""
    from deliveries.tasks import drain as drain_task

    limit = settings.WEBHOOK_BATCH_SIZE * max_drains
    due = Delivery.objects.due().values("id")[:limit].count()
    drains = -(-due // settings.WEBHOOK_BATCH_SIZE)
    for _ in range(drains):
        drain_task.delay()
    return due
