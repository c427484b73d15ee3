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


class EventTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField(allow_blank=True)


class EventTypeListSerializer(serializers.Serializer):
    results = EventTypeSerializer(many=True)
