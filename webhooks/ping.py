"""``webhook.ping``: one signed event sent now, answered with its outcome, recorded, never retried."""

from django.db import transaction

from deliveries import actions, sender
from deliveries.models import Delivery
from deliveries.worker import Job, message_for
from subscriptions.models import Subscription
from webhooks import correlation
from webhooks.models import Event

PING_TYPE = "webhook.ping"


def ping(subscription: Subscription) -> sender.Result:
    with transaction.atomic():
        event = Event.objects.create(
            type=PING_TYPE,
            data={"subscription": subscription.id, "message": "Hookrelay test ping"},
            tenant=subscription.tenant,
            correlation_id=correlation.get() or correlation.new_id(),
        )
        # Pending with no due time: no worker will claim it while it is being sent here.
        delivery = Delivery.objects.create(
            event=event, subscription=subscription, event_type=PING_TYPE, attempt_count=1, next_attempt_at=None
        )
    result = sender.send(message_for(Job(delivery, 1), {}))
    actions.record_single_attempt(delivery, 1, result)
    return result
