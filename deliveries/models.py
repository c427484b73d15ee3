from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from subscriptions.ids import make_id


def new_delivery_id() -> str:
    return make_id("dlv")


class Status(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeliveryQuerySet(models.QuerySet):
    def due(self, now: datetime | None = None) -> "DeliveryQuerySet":
        return self.filter(status=Status.PENDING, next_attempt_at__lte=now or timezone.now())


class Delivery(models.Model):
    """One event sent to one subscription; the row is the queue (docs/architecture.md)."""

    id = models.CharField(primary_key=True, max_length=32, default=new_delivery_id, editable=False)
    event = models.ForeignKey("webhooks.Event", on_delete=models.CASCADE, related_name="deliveries")
    # Indexed by "delivery_subscription" (subscription, -created_at): a second index would only be written.
    # No constraint: its check locked the subscription's row for every delivery inserted, and publishers to
    # one subscription queued on that row. A trigger refuses to delete a subscription that deliveries still
    # reference (migration 0003); a worker cancels a delivery whose subscription is gone all the same.
    subscription = models.ForeignKey(
        "subscriptions.Subscription",
        on_delete=models.CASCADE,
        related_name="deliveries",
        db_index=False,
        db_constraint=False,
    )
    event_type = models.CharField(max_length=128)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # Attempts started, ever: the next attempt's number is attempt_count + 1. Claiming a delivery
    # takes a number, so a worker killed mid-send leaves a number with no recorded attempt.
    attempt_count = models.PositiveIntegerField(default=0)
    # Failed attempts since the retry schedule last started (creation, redeliver, recover).
    failures = models.PositiveIntegerField(default=0)
    # While pending: when the next attempt is due, or, while claimed, when the claim's lease ends.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="delivery_due",
            ),
            models.Index(fields=["subscription", "-created_at"], name="delivery_subscription"),
            models.Index(fields=["status", "-created_at"], name="delivery_status"),
            models.Index(fields=["-created_at"], name="delivery_created"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.event_type} -> {self.subscription_id} ({self.status})"

    def retry_delay(self) -> timedelta | None:
        """How long to wait after the current failure, or None when the schedule is spent."""
        schedule = settings.WEBHOOK_RETRY_SCHEDULE
        if self.failures > len(schedule):
            return None
        return timedelta(seconds=schedule[self.failures - 1])


class Attempt(models.Model):
    # Indexed by the (delivery, number) unique constraint.
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts", db_index=False)
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=200, null=True, blank=True)
    response_body = models.TextField(blank=True)
    success = models.BooleanField(default=False)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="attempt_number_unique")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"

    @classmethod
    def from_result(cls, delivery_id: str, number: int, result) -> "Attempt":
        """An attempt as the sender reported it (a ``deliveries.sender.Result``)."""
        return cls(
            delivery_id=delivery_id,
            number=number,
            started_at=result.started_at,
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            error=result.error,
            response_body=result.response_body,
            success=result.success,
        )


class WorkerHeartbeat(models.Model):
    """When the workers last showed life, where every web process sees it: the periodic sweep and each worker's
    start write it, ``/healthz/workers`` reads it. One row; the embedded default's cache is per process."""

    WORKERS = "workers"

    name = models.CharField(primary_key=True, max_length=20)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} seen at {self.seen_at.isoformat()}"

    @classmethod
    def beat(cls) -> None:
        """One UPDATE, in autocommit: the row is created only the first time."""
        now = timezone.now()
        if not cls.objects.filter(name=cls.WORKERS).update(seen_at=now):
            cls.objects.update_or_create(name=cls.WORKERS, defaults={"seen_at": now})

    @classmethod
    def last_seen(cls) -> datetime | None:
        return cls.objects.filter(name=cls.WORKERS).values_list("seen_at", flat=True).first()
