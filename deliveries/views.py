from django.db import transaction
from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from deliveries import actions
from deliveries.filters import DeliveryFilter
from deliveries.models import Attempt, Delivery
from deliveries.serializers import DeliveryDetailSerializer, DeliverySerializer
from subscriptions import schema
from subscriptions.tenancy import TenantScopedMixin


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("event_type", schema.EVENT_TYPE_FILTER, description="Only deliveries of this type"),
            OpenApiParameter("subscription", schema.NO_NUL, description="Only this subscription's (an id)"),
            OpenApiParameter("event", schema.NO_NUL, description="Only this event's (an id)"),
        ]
    )
)
class DeliveryViewSet(TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Delivery.objects.select_related("subscription").order_by("-created_at", "-id")
    serializer_class = DeliverySerializer
    filterset_class = DeliveryFilter
    tenant_path = "subscription__tenant"
    required_scopes = {"list": "deliveries.read", "retrieve": "deliveries.read", "redeliver": "deliveries.write"}

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(Prefetch("attempts", queryset=Attempt.objects.order_by("number")))
        return queryset

    def get_serializer_class(self):
        return DeliveryDetailSerializer if self.action in ("retrieve", "redeliver") else DeliverySerializer

    @extend_schema(
        request=None,
        responses={202: DeliveryDetailSerializer, 409: OpenApiResponse(description="subscription inactive or deleted")},
    )
    @action(detail=True, methods=["post"])
    def redeliver(self, request: Request, pk: str | None = None) -> Response:
        delivery = self.get_object()
        subscription = delivery.subscription
        if not subscription.is_active or subscription.is_deleted:
            return Response({"detail": "the subscription is inactive or deleted"}, status=status.HTTP_409_CONFLICT)
        # Answered from inside the transaction that wrote it: once it commits, a worker may claim the row and
        # push next_attempt_at forward by its lease (and attempt_count up) before this view would read it again.
        with transaction.atomic():
            actions.redeliver(delivery)
            body = DeliveryDetailSerializer(delivery).data
        return Response(body, status=status.HTTP_202_ACCEPTED)
