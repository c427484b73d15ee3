"""``POST /api/v1/events/`` for the plain request, below DRF: one statement authenticates and publishes.

An ingest request through DRF ran two statements (the token, then the event) and DRF's request cycle
(request wrapping, negotiation, parsing, permissions, rendering) around them. A request that is plainly
fine takes this path instead: a bearer token this process has checked in full before (``Caller``), a JSON
body that ``plainly_valid_event`` accepts, no ``Idempotency-Key``, nothing to negotiate. The event's insert
itself confirms the token (current, unrestricted, the same scope, client and tenant), so a token revoked a
moment ago publishes nothing. Anything else, and any request whose insert wrote nothing, returns None and
goes through the DRF view, which keeps the one implementation of every refusal and edge case.
"""

import json

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from config.parsers import nesting_error
from subscriptions.tenancy import bearer_token, remembered_caller
from webhooks.publishing import publish_if
from webhooks.serializers import EventSerializer, plainly_valid_event

PUBLISH_SCOPE = "events.publish"
PLAIN_ACCEPT = frozenset([None, "*/*", "application/json"])
# As the DRF view answers a 202: the headers APIView and its renderer add.
HEADERS = {"Vary": "Accept", "Allow": "POST, OPTIONS"}
RENDERER = JSONRenderer()
# Its representation only, without a serializer instance and its ``data`` per request.
REPRESENTATION = EventSerializer()


def publish_plainly(request: HttpRequest) -> HttpResponse | None:
    """The 202 the DRF view would give, or None if this request is not plainly fine (nothing written)."""
    meta = request.META
    if (
        request.method != "POST"
        or meta.get("CONTENT_TYPE") != "application/json"
        or meta.get("HTTP_ACCEPT") not in PLAIN_ACCEPT
        or "HTTP_IDEMPOTENCY_KEY" in meta
        or connection.vendor != "postgresql"
    ):
        return None
    token = bearer_token(request)
    caller = remembered_caller(token) if token else None
    if caller is None or not caller.may(PUBLISH_SCOPE):
        return None
    validated = plainly_valid_body(request)
    if validated is None:
        return None
    named = validated.get("tenant")
    if named is not None and (caller.tenant is None or named != caller.tenant.slug):
        return None  # a platform client naming a tenant, or a tenant client naming another
    event = publish_if(
        caller.confirmed(timezone.now()),
        validated["type"],
        validated["data"],
        tenant=caller.tenant,
        idempotency_scope=f"client:{caller.client_id}",
        correlation_id=getattr(request, "correlation_id", ""),
    )
    if event is None:
        return None
    body = RENDERER.render(REPRESENTATION.to_representation(event))
    return HttpResponse(body, status=202, content_type="application/json", headers=HEADERS)


def plainly_valid_body(request: HttpRequest) -> dict | None:
    """The body as DRF's JSONParser would read it (UTF-8, no NaN or Infinity) if ``plainly_valid_event``
    accepts it, within the size and nesting limits; else None."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > settings.EVENT_MAX_BODY_BYTES:
        return None
    raw = request.body
    if len(raw) > settings.EVENT_MAX_BODY_BYTES or nesting_error(raw) is not None:
        return None
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except ValueError:
        return None
    return plainly_valid_event(body)


def refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")
