"""State changes that touch several rows: each one function in a transaction (STYLE.md)."""

from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config import metrics
from deliveries import alerts
from deliveries.models import Attempt, Delivery, Status
from deliveries.wake import wake
from subscriptions.models import Subscription

SUBSCRIPTION_DISABLED = "subscription disabled"


@transaction.atomic
def disable_subscription(subscription: Subscription, reason: str, *, alert: bool = True) -> int:
    """Deactivate and fail its pending deliveries with ``subscription disabled``; returns how many failed."""
    changed = Subscription.objects.filter(pk=subscription.pk, is_active=True).update(
        is_active=False, disabled_reason=reason, updated_at=timezone.now()
    )
    subscription.is_active, subscription.disabled_reason = False, reason
    failed = fail_pending(Delivery.objects.filter(subscription=subscription), SUBSCRIPTION_DISABLED)
    if changed and alert:
        metrics.SUBSCRIPTIONS_DISABLED.inc()
        transaction.on_commit(lambda: alerts.subscription_disabled(subscription, reason))
    return failed


@transaction.atomic
def enable_subscription(subscription: Subscription) -> None:
    subscription.is_active, subscription.disabled_reason, subscription.consecutive_failures = True, None, 0
    subscription.save(update_fields=["is_active", "disabled_reason", "consecutive_failures", "updated_at"])


def fail_pending(deliveries, error: str) -> int:
    """Fail pending deliveries without sending, recording why as an attempt (inside the caller's transaction)."""
    now = timezone.now()
    rows = list(deliveries.select_for_update().filter(status=Status.PENDING).values_list("id", "attempt_count"))
    Attempt.objects.bulk_create(
        Attempt(delivery_id=pk, number=count + 1, started_at=now, error=error) for pk, count in rows
    )
    return Delivery.objects.filter(id__in=[pk for pk, _ in rows]).update(
        status=Status.FAILED,
        attempt_count=F("attempt_count") + 1,
        next_attempt_at=None,
        completed_at=now,
        last_error=error,
        last_status_code=None,
    )


@transaction.atomic
def delete_subscription(subscription: Subscription) -> int:
    """Soft-delete: the history stays listable; pending deliveries are cancelled."""
    now = timezone.now()
    subscription.deleted_at, subscription.is_active = now, False
    subscription.save(update_fields=["deleted_at", "is_active", "updated_at"])
    return Delivery.objects.filter(subscription=subscription, status=Status.PENDING).update(
        status=Status.CANCELLED, next_attempt_at=None, completed_at=now
    )


@transaction.atomic
def cancel(delivery: Delivery) -> bool:
    now = timezone.now()
    changed = Delivery.objects.filter(pk=delivery.pk, status=Status.PENDING).update(
        status=Status.CANCELLED, next_attempt_at=None, completed_at=now
    )
    return bool(changed)


def requeue(deliveries) -> int:
    """Pending, due now, with a fresh retry schedule; the webhook-id (the event id) stays the same."""
    count = deliveries.update(status=Status.PENDING, next_attempt_at=timezone.now(), failures=0, completed_at=None)
    if count:
        transaction.on_commit(wake)
    return count


@transaction.atomic
def redeliver(delivery: Delivery) -> int:
    """Requeue one delivery and reload ``delivery`` as written, before the commit lets a worker claim it."""
    count = requeue(Delivery.objects.filter(pk=delivery.pk))
    delivery.refresh_from_db()
    return count


@transaction.atomic
def recover(subscription: Subscription, since: datetime) -> int:
    failed = Delivery.objects.filter(subscription=subscription, status=Status.FAILED, created_at__gte=since)
    return requeue(failed)


@transaction.atomic
def record_single_attempt(delivery: Delivery, number: int, result) -> None:
    """Record an attempt that ends its delivery either way (a ping): no retry, no alert, no counters."""
    Attempt.from_result(delivery.pk, number, result).save(force_insert=True)
    delivery.status = Status.SUCCEEDED if result.success else Status.FAILED
    delivery.completed_at = timezone.now()
    delivery.last_error, delivery.last_status_code = result.error, result.status_code
    delivery.save(update_fields=["status", "completed_at", "last_error", "last_status_code"])
