"""Thin Celery tasks: no state in the message, no Celery retries (docs/architecture.md)."""

from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import connection

from deliveries import worker
from deliveries.models import WorkerHeartbeat

# The budget, the linger, the slow sends a winding-down drain waits for, and margin.
WAITS = worker.DRAIN_BUDGET_SECONDS + worker.LINGER_SECONDS + 2 * settings.WEBHOOK_TIMEOUT
TIME_LIMIT = int(WAITS + settings.WEBHOOK_LEASE_MARGIN + 30)


@shared_task(name="deliveries.tasks.drain", time_limit=TIME_LIMIT, soft_time_limit=TIME_LIMIT - 10)
def drain() -> int:
    return worker.drain(linger=worker.LINGER_SECONDS)


@shared_task(name="deliveries.tasks.sweep", time_limit=60, soft_time_limit=50)
def sweep() -> int:
    # A sweep that runs proves the scheduler, the broker and a worker alive at once: /healthz/workers.
    WorkerHeartbeat.beat()
    return worker.sweep()


@worker_ready.connect
def show_life_at_start(**kwargs: Any) -> None:
    """A worker that has just started counts as seen, before the first sweep reaches it."""
    WorkerHeartbeat.beat()
    connection.close()  # the main process sends no more queries; its pool processes have their own
