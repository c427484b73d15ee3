from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from deliveries.models import Attempt, Delivery


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_body", "success"]


class DeliverySerializer(serializers.ModelSerializer):
    event = serializers.CharField(source="event_id", read_only=True)
    subscription = serializers.CharField(source="subscription_id", read_only=True)

    class Meta:
        model = Delivery
        fields = ["id", "event", "event_type", "subscription", "status", "attempt_count", "next_attempt_at"]
        fields += ["created_at", "completed_at"]


class DeliveryDetailSerializer(DeliverySerializer):
    attempts = serializers.SerializerMethodField()

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "attempts"]

    @extend_schema_field(AttemptSerializer(many=True))
    def get_attempts(self, delivery: Delivery) -> list[dict]:
        return AttemptSerializer(sorted(delivery.attempts.all(), key=lambda a: a.number), many=True).data
