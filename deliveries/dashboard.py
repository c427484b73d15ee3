"""What the operators' dashboard shows: plain queries over the delivery rows, a handful per page load."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Min, Q
from django.db.models.functions import TruncHour

from deliveries.models import Delivery, Status
from deliveries.sender import safe_url
from subscriptions.models import Subscription

WINDOW_HOURS = 24
FAILING_LIMIT = 20


@dataclass
class HourBucket:
    """Deliveries created in one hour, counted by their current status."""

    start: datetime
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Status.values, 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class FailingSubscription:
    subscription: Subscription
    failed: int  # deliveries failed for good within the window
    retrying: int  # pending deliveries with at least one failed attempt

    @property
    def endpoint(self) -> str:
        return safe_url(self.subscription.url)


@dataclass
class Summary:
    since: datetime
    hours: list[HourBucket]
    pending: int
    oldest_pending_age: timedelta | None
    failing: list[FailingSubscription]

    def total(self, status: str) -> int:
        return sum(bucket.counts[status] for bucket in self.hours)

    @property
    def deliveries(self) -> int:
        return sum(bucket.total for bucket in self.hours)

    @property
    def success_rate(self) -> float | None:
        """Succeeded out of finished (succeeded or failed) deliveries of the window; None when none finished."""
        succeeded, failed = self.total(Status.SUCCEEDED), self.total(Status.FAILED)
        return succeeded / (succeeded + failed) if succeeded + failed else None


def window_start(now: datetime) -> datetime:
    """The start of the oldest of the 24 hourly buckets, the last of which holds ``now``."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=WINDOW_HOURS - 1)


def hourly_outcomes(since: datetime) -> list[HourBucket]:
    buckets = {since + timedelta(hours=h): HourBucket(since + timedelta(hours=h)) for h in range(WINDOW_HOURS)}
    rows = (
        Delivery.objects.filter(created_at__gte=since)
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("hour", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        if row["hour"] in buckets:
            buckets[row["hour"]].counts[row["status"]] += row["n"]
    return list(buckets.values())


def pending_backlog(now: datetime) -> tuple[int, timedelta | None]:
    """How many deliveries are pending, and how long the oldest of them has been waiting."""
    row = Delivery.objects.filter(status=Status.PENDING).aggregate(n=Count("id"), oldest=Min("created_at"))
    return row["n"], (now - row["oldest"]) if row["oldest"] else None


def failing_subscriptions(since: datetime, limit: int = FAILING_LIMIT) -> list[FailingSubscription]:
    """Live subscriptions with deliveries failed in the window or retrying now, worst first; then disabled ones."""
    troubled = Q(status=Status.FAILED, completed_at__gte=since) | Q(status=Status.PENDING, failures__gt=0)
    rows = (
        Delivery.objects.filter(troubled)
        .values("subscription_id")
        .annotate(
            failed=Count("id", filter=Q(status=Status.FAILED)), retrying=Count("id", filter=Q(status=Status.PENDING))
        )
        .order_by("-failed", "-retrying", "subscription_id")[:limit]
    )
    counts = {row["subscription_id"]: (row["failed"], row["retrying"]) for row in rows}
    live = Subscription.objects.live().select_related("tenant")
    by_id = live.in_bulk(list(counts))
    failing = [FailingSubscription(by_id[pk], *counts[pk]) for pk in counts if pk in by_id]
    if len(failing) < limit:
        others = live.filter(Q(is_active=False) | Q(consecutive_failures__gt=0)).exclude(id__in=list(counts))
        others = others.order_by("-consecutive_failures", "-updated_at")[: limit - len(failing)]
        failing += [FailingSubscription(s, 0, 0) for s in others]
    return failing


def summary(now: datetime) -> Summary:
    since = window_start(now)
    pending, oldest_age = pending_backlog(now)
    return Summary(since, hourly_outcomes(since), pending, oldest_age, failing_subscriptions(since))
