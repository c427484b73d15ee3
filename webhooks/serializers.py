from datetime import UTC

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from subscriptions import schema, topics, validation
from subscriptions.fields import StrictCharField
from webhooks.models import Event
from webhooks.publishing import RESERVED_PREFIX, has_unstorable_text


@extend_schema_field(schema.EVENT_TYPE)
class EventTypeField(StrictCharField):
    pass


@extend_schema_field(schema.TENANT_SLUG)
class TenantSlugField(StrictCharField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {},
        "description": "Any JSON object; no string in it (keys included) may hold a NUL or an unpaired surrogate.",
    }
)
class EventDataField(serializers.JSONField):
    pass


class EventCreateSerializer(serializers.Serializer):
    type = EventTypeField(validators=[validation.validate_event_type])
    data = EventDataField()
    tenant = TenantSlugField(required=False, allow_null=True)

    def validate_data(self, value: object) -> dict:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        if has_unstorable_text(value):
            raise serializers.ValidationError("may not contain NUL characters or unpaired surrogates")
        return value


def plainly_valid_event(body: object) -> dict | None:
    """``EventCreateSerializer(data=body).validated_data`` for a body it certainly accepts, without building
    the serializer; None for anything it must judge (and word the errors of).

    DRF deep-copies a serializer's fields for every instance: a tenth of an ingest request's CPU.
    Only plain bodies take this path: a valid event type, an object of storable text and finite numbers, no
    tenant or one that needs no trimming. ``tests/test_event_validation.py`` checks that it never accepts
    what the serializer refuses, and returns what the serializer would.
    """
    if type(body) is not dict:
        return None
    event_type, data = body.get("type"), body.get("data")
    if type(event_type) is not str or not topics.is_valid_event_type(event_type):
        return None
    if event_type.startswith(RESERVED_PREFIX) or type(data) is not dict:
        return None
    if has_unstorable_text(data, or_non_finite=True):  # the serializer refuses NaN and infinities too
        return None
    validated = {"type": event_type, "data": data}
    if "tenant" in body:
        tenant = body["tenant"]
        if tenant is not None and (
            type(tenant) is not str or not tenant or tenant != tenant.strip() or has_unstorable_text(tenant)
        ):
            return None
        validated["tenant"] = tenant
    return validated


class EventSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    deliveries = serializers.IntegerField(source="delivery_count", read_only=True)

    class Meta:
        model = Event
        fields = ["id", "type", "tenant", "created_at", "deliveries"]

    def to_representation(self, event: Event) -> dict:
        # The fields above, without DRF building a ModelSerializer's fields for every instance (a tenth of
        # an ingest request's CPU); they still describe the response in the OpenAPI schema.
        return {
            "id": event.id,
            "type": event.type,
            "tenant": event.tenant.slug if event.tenant_id else None,
            "created_at": CREATED_AT.to_representation(event.created_at),
            "deliveries": event.delivery_count,
        }


# In UTC, as the contract says, not the current time zone: looking that up was half of a representation.
CREATED_AT = serializers.DateTimeField(default_timezone=UTC)


class EventTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField(allow_blank=True)


class EventTypeListSerializer(serializers.Serializer):
    results = EventTypeSerializer(many=True)
