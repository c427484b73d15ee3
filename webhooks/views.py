import hashlib
import json
import re

from django.conf import settings
from django.http.request import RawPostDataException
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from subscriptions import schema
from subscriptions.tenancy import api_client, scope_to_caller, tenant_for_write
from webhooks.ingest import publish_plainly
from webhooks.model_events import declared_types
from webhooks.models import Event
from webhooks.publishing import RESERVED_PREFIX, publish
from webhooks.serializers import (
    EventCreateSerializer,
    EventSerializer,
    EventTypeListSerializer,
    plainly_valid_event,
)

IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = f"the request body is larger than {settings.EVENT_MAX_BODY_BYTES} bytes"


class EventCreateView(APIView):
    required_scopes = {"post": "events.publish"}

    def dispatch(self, request, *args, **kwargs):
        # A plainly fine request publishes below DRF (webhooks.ingest); every other one comes through here.
        return publish_plainly(request) or super().dispatch(request, *args, **kwargs)

    def initial(self, request: Request, *args, **kwargs) -> None:
        # Before authentication: the OAuth2 authenticator reads the body, and 256 KiB is checked unparsed.
        check_body_size(request)
        super().initial(request, *args, **kwargs)

    @extend_schema(
        request=EventCreateSerializer,
        responses={
            202: EventSerializer,
            200: OpenApiResponse(EventSerializer, description="A replay of an earlier request with this key"),
            413: OpenApiResponse(description="Body over 256 KiB"),
            422: OpenApiResponse(description="Idempotency-Key reused with a different body"),
        },
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                schema.IDEMPOTENCY_KEY,
                OpenApiParameter.HEADER,
                description="1 to 255 printable ASCII characters: a repeat within 24 h replays the first answer.",
            ),
            OpenApiParameter(
                "Idempotent-Replayed",
                {"type": "string", "enum": ["true"]},
                OpenApiParameter.HEADER,
                response=[200],
                description="Present on a replay: the first request's answer, nothing created.",
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        key = idempotency_key(request)
        validated = plainly_valid_event(request.data)
        if validated is None:
            body = EventCreateSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            validated = body.validated_data
        tenant = tenant_for_write(request, validated.get("tenant"))
        # Only a keyed request can be replayed, so only its body is compared (and hashed).
        fingerprint = hashlib.sha256(json.dumps(request.data, sort_keys=True).encode()).hexdigest() if key else ""
        event = publish(
            validated["type"],
            validated["data"],
            tenant=tenant,
            idempotency_key=key,
            idempotency_scope=f"client:{api_client(request).pk}",
            request_fingerprint=fingerprint,
            correlation_id=getattr(request, "correlation_id", ""),
        )
        if not event.replayed:
            return Response(EventSerializer(event).data, status=status.HTTP_202_ACCEPTED)
        if event.request_fingerprint != fingerprint:
            return Response(
                {"detail": "this Idempotency-Key was used with a different body"},
                status=status.HTTP_422_UNPROCESSABLE_ENTITY,
            )
        return Response(EventSerializer(event).data, headers={"Idempotent-Replayed": "true"})


def check_body_size(request: Request) -> None:
    """Refuse an oversize body before parsing it (docs/api.md)."""
    limit = settings.EVENT_MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge()
    try:
        if len(request.body) > limit:
            raise PayloadTooLarge()
    except RawPostDataException:
        pass


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise exceptions.ValidationError({"Idempotency-Key": ["must be 1 to 255 printable ASCII characters"]})
    return key


class EventTypeListView(APIView):
    required_scopes: dict[str, str] = {}

    @extend_schema(responses=EventTypeListSerializer)
    def get(self, request: Request) -> Response:
        types = declared_types()
        published = scope_to_caller(Event.objects.exclude(type__startswith=RESERVED_PREFIX), request)
        for event_type in published.values_list("type", flat=True).distinct().order_by():
            types.setdefault(event_type, "")
        return Response({"results": [{"type": t, "description": types[t]} for t in sorted(types)]})
