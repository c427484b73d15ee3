from django.db import transaction

from deliveries.models import Delivery
from deliveries.wake import wake
from subscriptions.models import Subscription


def create_deliveries(event, subscriptions: list[Subscription]) -> list[Delivery]:
    """One pending delivery per subscription, in the caller's transaction; a worker wakes on commit."""
    rows = [
        Delivery(
            event=event,
            subscription_id=subscription.id,
            event_type=event.type,
            next_attempt_at=event.created_at,
            created_at=event.created_at,
        )
        for subscription in subscriptions
    ]
    if rows:
        Delivery.objects.bulk_create(rows)
        transaction.on_commit(wake)
    return rows
