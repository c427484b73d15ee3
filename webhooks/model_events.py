"""``settings.WEBHOOK_MODEL_EVENTS``: model post_save / post_delete signals that publish events."""

import json
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.signals import post_delete, post_save
from django.utils.module_loading import import_string

SENSITIVE_WORDS = ("password", "secret", "token", "api_key", "private_key", "hash", "otp")
# A login saves only last_login: that is not a change to the user worth an event.
IGNORED_UPDATES = frozenset({"last_login"})


def default_serializer(instance: models.Model) -> dict:
    """Concrete fields by attribute name, leaving out anything that looks like a credential."""
    data = {"id": instance.pk}
    for field in instance._meta.concrete_fields:
        if not any(word in field.name for word in SENSITIVE_WORDS):
            data[field.attname] = field.value_from_object(instance)
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def tenant_of(instance: models.Model, path: str | None) -> Any:
    """Follow ``tenant_field`` (``a__b`` spans relations) to a Tenant or a tenant slug."""
    if not path:
        return None
    value: Any = instance
    for part in path.split("__"):
        if value is None:
            return None
        value = getattr(value, part)  # a misspelt tenant_field fails loudly instead of publishing tenant-less
    return value


def connect_all() -> None:
    for label, spec in settings.WEBHOOK_MODEL_EVENTS.items():
        model = apps.get_model(label)
        serialize = import_string(spec["serializer"]) if spec.get("serializer") else default_serializer
        post_save.connect(_on_save(spec, serialize), sender=model, weak=False, dispatch_uid=f"hookrelay-save-{label}")
        post_delete.connect(
            _on_delete(spec, serialize), sender=model, weak=False, dispatch_uid=f"hookrelay-delete-{label}"
        )


def _on_save(spec: dict, serialize: Callable[[models.Model], dict]) -> Callable[..., None]:
    def handler(
        sender: type, instance: models.Model, created: bool, raw: bool = False, update_fields=None, **kwargs: Any
    ) -> None:
        event_type = spec.get("created" if created else "updated")
        if update_fields is not None and set(update_fields) <= IGNORED_UPDATES:
            return
        if event_type and not raw:
            _publish(event_type, instance, spec, serialize)

    return handler


def _on_delete(spec: dict, serialize: Callable[[models.Model], dict]) -> Callable[..., None]:
    def handler(sender: type, instance: models.Model, **kwargs: Any) -> None:
        if spec.get("deleted"):
            _publish(spec["deleted"], instance, spec, serialize)

    return handler


def _publish(event_type: str, instance: models.Model, spec: dict, serialize: Callable[[models.Model], dict]) -> None:
    from webhooks.publishing import publish

    publish(event_type, serialize(instance), tenant=tenant_of(instance, spec.get("tenant_field")))


def declared_types() -> dict[str, str]:
    """Event types declared in settings, with a description each."""
    types = dict(settings.WEBHOOK_EVENT_TYPES)
    for label, spec in settings.WEBHOOK_MODEL_EVENTS.items():
        for action in ("created", "updated", "deleted"):
            if spec.get(action):
                types.setdefault(spec[action], f"A {label} was {action}.")
    return types
