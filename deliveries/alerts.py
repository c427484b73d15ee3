"""What goes out when a delivery fails for good or a subscription is disabled: signal, email, ERROR log."""

import logging

from django.core.mail import mail_admins

from deliveries import signals
from deliveries.models import Delivery
from deliveries.sender import safe_url
from subscriptions.models import Subscription

logger = logging.getLogger("hookrelay.alerts")


def delivery_failed(delivery: Delivery) -> None:
    url = safe_url(delivery.subscription.url)
    summary = (
        f"delivery {delivery.id} of event {delivery.event_id} ({delivery.event_type}) to subscription "
        f"{delivery.subscription_id} at {url} failed after {delivery.attempt_count} attempts: {delivery.last_error}"
    )
    logger.error(
        "delivery failed event=%s delivery=%s subscription=%s url=%s attempts=%s error=%r",
        delivery.event_id,
        delivery.id,
        delivery.subscription_id,
        url,
        delivery.attempt_count,
        delivery.last_error,
    )
    mail_admins(f"Webhook delivery failed: {delivery.event_type} to {url}", summary, fail_silently=True)
    signals.delivery_failed.send(sender=Delivery, delivery=delivery)


def subscription_disabled(subscription: Subscription, reason: str) -> None:
    url = safe_url(subscription.url)
    logger.error("subscription disabled subscription=%s url=%s reason=%r", subscription.id, url, reason)
    mail_admins(
        f"Webhook subscription disabled: {url}",
        f"Subscription {subscription.id} at {url} was disabled: {reason}",
        fail_silently=True,
    )
    signals.subscription_disabled.send(sender=Subscription, subscription=subscription, reason=reason)
