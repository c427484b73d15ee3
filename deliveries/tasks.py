"""Thin Celery tasks: no state in the message, no Celery retries (DESIGN.md section 1)."""

from celery import shared_task
from django.conf import settings

from deliveries import worker

# The budget, the linger, the slow sends a winding-down drain waits for, and margin.
WAITS = worker.DRAIN_BUDGET_SECONDS + worker.LINGER_SECONDS + 2 * settings.WEBHOOK_TIMEOUT
TIME_LIMIT = int(WAITS + settings.WEBHOOK_LEASE_MARGIN + 30)


@shared_task(name="deliveries.tasks.drain", time_limit=TIME_LIMIT, soft_time_limit=TIME_LIMIT - 10)
def drain() -> int:
    return worker.drain(linger=worker.LINGER_SECONDS)


@shared_task(name="deliveries.tasks.sweep", time_limit=60, soft_time_limit=50)
def sweep() -> int:
    return worker.sweep()
