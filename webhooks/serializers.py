from rest_framework import serializers

from subscriptions import validation
from subscriptions.fields import StrictCharField
from webhooks.models import Event
from webhooks.publishing import has_unstorable_text


class EventCreateSerializer(serializers.Serializer):
    type = StrictCharField(validators=[validation.validate_event_type])
    data = serializers.JSONField()
    tenant = StrictCharField(required=False, allow_null=True)

    def validate_data(self, value: object) -> dict:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        if has_unstorable_text(value):
            raise serializers.ValidationError("may not contain NUL characters or unpaired surrogates")
        return value


class EventSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
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


CREATED_AT = serializers.DateTimeField()


class EventTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField(allow_blank=True)


class EventTypeListSerializer(serializers.Serializer):
    results = EventTypeSerializer(many=True)
