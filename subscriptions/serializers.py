from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from subscriptions import schema, validation
from subscriptions.fields import StrictBooleanField, StrictCharField, StrictListField
from subscriptions.models import Subscription


# The rules the validators enforce, as the OpenAPI schema states them (subscriptions/schema.py).
@extend_schema_field(schema.URL)
class UrlField(StrictCharField):
    pass


@extend_schema_field(schema.EVENT_PATTERNS)
class EventPatternsField(StrictListField):
    pass


@extend_schema_field(schema.DESCRIPTION)
class DescriptionField(StrictCharField):
    pass


@extend_schema_field(schema.SECRET)
class SecretField(StrictCharField):
    pass


@extend_schema_field(schema.TENANT_SLUG_OR_BLANK)
class TenantSlugOrBlankField(StrictCharField):
    pass


class SubscriptionSerializer(serializers.ModelSerializer):
    url = UrlField(max_length=validation.MAX_URL_LENGTH, validators=[validation.validate_url])
    events = EventPatternsField(child=StrictCharField(), validators=[validation.validate_patterns])
    description = DescriptionField(max_length=500, required=False, allow_blank=True)
    is_active = StrictBooleanField(required=False)
    tenant = serializers.SerializerMethodField()

    class Meta:
        model = Subscription
        fields = ["id", "url", "events", "description", "is_active", "disabled_reason", "tenant"]
        fields += ["created_at", "updated_at"]
        read_only_fields = ["id", "disabled_reason", "created_at", "updated_at"]

    @extend_schema_field({"type": "string", "nullable": True, "description": "The tenant's slug; null for none."})
    def get_tenant(self, subscription: Subscription) -> str | None:
        return subscription.tenant.slug if subscription.tenant else None


class SubscriptionCreateSerializer(SubscriptionSerializer):
    """A subscription as created, with its signing secret."""

    secret = SecretField(required=False, validators=[validation.validate_secret])

    class Meta(SubscriptionSerializer.Meta):
        fields = [*SubscriptionSerializer.Meta.fields, "secret"]


@extend_schema_serializer(component_name="SubscriptionCreate")
class SubscriptionCreateRequestSerializer(SubscriptionCreateSerializer):
    """A new subscription; ``tenant`` names its owner, ``secret`` chooses its signing secret."""

    tenant = TenantSlugOrBlankField(required=False, allow_null=True, allow_blank=True)

    class Meta(SubscriptionCreateSerializer.Meta):
        pass


class SecretSerializer(serializers.Serializer):
    secret = SecretField(validators=[validation.validate_secret])


class RotateSecretSerializer(serializers.Serializer):
    secret = SecretField(required=False, validators=[validation.validate_secret])


class RecoverSerializer(serializers.Serializer):
    since = serializers.DateTimeField()


class RequeuedSerializer(serializers.Serializer):
    requeued = serializers.IntegerField()


class PingResultSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    status_code = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.IntegerField()
    error = serializers.CharField(allow_null=True)
    response_body = serializers.CharField(allow_blank=True)
