from django.db import transaction

from deliveries.models import Delivery
from deliveries.wake import wake


def create_deliveries(event, subscription_ids: list[str]) -> list[Delivery]:
    """One pending delivery per subscription, in the caller's transaction; a worker wakes on commit."""
    rows = [
        Delivery(
            event=event,
            subscription_id=subscription_id,
            event_type=event.type,
            next_attempt_at=event.created_at,
            created_at=event.created_at,
        )
        for subscription_id in subscription_ids
    ]
    if rows:
        Delivery.objects.bulk_create(rows)
        transaction.on_commit(wake)
    return rows
