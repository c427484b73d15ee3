"""Events: ``publish()``, model signal wiring, event types."""

from typing import Any


def publish(event_type: str, data: dict, **kwargs: Any):  # noqa: ANN201 - returns webhooks.models.Event
    """Publish an event; see :func:`webhooks.publishing.publish`.

    Imported lazily so that ``from webhooks import publish`` works before the app registry is ready.
    """
    from webhooks.publishing import publish as _publish

    return _publish(event_type, data, **kwargs)


__all__ = ["publish"]
