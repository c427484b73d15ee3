from django.dispatch import Signal

# Sent with ``delivery`` when a delivery ends ``failed`` (retries exhausted, or 410 Gone).
delivery_failed = Signal()
# Sent with ``subscription`` and ``reason`` when a subscription is disabled by the engine.
subscription_disabled = Signal()
