from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from deliveries import actions
from subscriptions import schema, serializers
from subscriptions.fields import StrictCharField
from subscriptions.filters import SubscriptionFilter
from subscriptions.models import Subscription
from subscriptions.tenancy import TenantScopedMixin, tenant_for_write
from webhooks.ping import ping

READ, WRITE = "subscriptions.read", "subscriptions.write"
DISABLED_BY_CLIENT = "disabled through the API"


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("event", schema.EVENT_TYPE_FILTER, description="Only subscriptions receiving this type")
        ]
    ),
    create=extend_schema(
        request=serializers.SubscriptionCreateRequestSerializer,
        responses={201: serializers.SubscriptionCreateSerializer},
    ),
)
class SubscriptionViewSet(TenantScopedMixin, viewsets.ModelViewSet):
    queryset = Subscription.objects.live().select_related("tenant").order_by("-created_at", "id")
    serializer_class = serializers.SubscriptionSerializer
    filterset_class = SubscriptionFilter
    required_scopes = {
        "list": READ,
        "retrieve": READ,
        "secret": READ,
        "create": WRITE,
        "update": WRITE,
        "partial_update": WRITE,
        "destroy": WRITE,
        "rotate_secret": WRITE,
        "ping": WRITE,
        "recover": "deliveries.write",
    }

    def get_serializer_class(self):
        return serializers.SubscriptionCreateSerializer if self.action == "create" else super().get_serializer_class()

    def create(self, request: Request, *args, **kwargs) -> Response:
        response = super().create(request, *args, **kwargs)
        response["Location"] = f"{request.path}{response.data['id']}/"  # keeps the path's version, if any
        return response

    def perform_create(self, serializer) -> None:
        slug = self.request.data.get("tenant")
        if slug is not None:
            # The slug reaches a query: NUL and lone surrogates must be refused first (a 400, not a 500).
            try:
                slug = StrictCharField(allow_blank=True, trim_whitespace=False).run_validation(slug)
            except exceptions.ValidationError as exc:
                raise exceptions.ValidationError({"tenant": exc.detail}) from None
        serializer.save(tenant=tenant_for_write(self.request, slug))

    def update(self, request: Request, *args, **kwargs) -> Response:
        if isinstance(request.data, dict) and "secret" in request.data:
            raise exceptions.ValidationError({"secret": ["cannot be changed here: use rotate-secret/"]})
        return super().update(request, *args, **kwargs)

    @transaction.atomic
    def perform_update(self, serializer) -> None:
        was_active = serializer.instance.is_active
        is_active = serializer.validated_data.pop("is_active", was_active)
        subscription = serializer.save()
        if is_active and not was_active:
            actions.enable_subscription(subscription)
        elif was_active and not is_active:
            actions.disable_subscription(subscription, DISABLED_BY_CLIENT, alert=False)

    def perform_destroy(self, instance: Subscription) -> None:
        actions.delete_subscription(instance)

    @extend_schema(request=None, responses=serializers.SecretSerializer)
    @action(detail=True, methods=["get"])
    def secret(self, request: Request, pk: str | None = None) -> Response:
        return Response({"secret": self.get_object().secret})

    @extend_schema(request=serializers.RotateSecretSerializer, responses=serializers.SecretSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        subscription = self.get_object()
        body = serializers.RotateSecretSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return Response({"secret": subscription.rotate_secret(body.validated_data.get("secret"))})

    @extend_schema(request=None, responses=serializers.PingResultSerializer)
    @action(detail=True, methods=["post"])
    def ping(self, request: Request, pk: str | None = None) -> Response:
        result = ping(self.get_object())
        return Response(
            {
                "success": result.success,
                "status_code": result.status_code,
                "duration_ms": result.duration_ms,
                "error": result.error,
                "response_body": result.response_body,
            }
        )

    @extend_schema(
        request=serializers.RecoverSerializer,
        responses={202: serializers.RequeuedSerializer, 409: OpenApiResponse(description="subscription not active")},
    )
    @action(detail=True, methods=["post"])
    def recover(self, request: Request, pk: str | None = None) -> Response:
        subscription = self.get_object()
        body = serializers.RecoverSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if not subscription.is_active:
            return Response({"detail": "the subscription is not active"}, status=status.HTTP_409_CONFLICT)
        count = actions.recover(subscription, body.validated_data["since"])
        return Response({"requeued": count}, status=status.HTTP_202_ACCEPTED)
