import functools
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from kombu import Connection

from config import metrics as hookrelay_metrics
from config.api import json_error
from deliveries.models import WorkerHeartbeat

CHECK_TIMEOUT = 2.0
# The sweep runs every 1 to 5 seconds: 30 seconds without one is a dead worker or scheduler, not a slow one.
WORKERS_STALE_AFTER_SECONDS = 30


def get_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Django's ``require_GET``, with the 405 in JSON like every other error."""

    @functools.wraps(view)
    def checked(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method != "GET":
            response = json_error(405, f'Method "{request.method}" not allowed.')
            response["Allow"] = "GET"
            return response
        return view(request, *args, **kwargs)

    return checked


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _check_broker() -> str:
    # connect_timeout bounds only the TCP connect: a broker that accepts and never answers needs a read timeout.
    options = {**getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}), "socket_timeout": CHECK_TIMEOUT}
    transport = getattr(settings, "CELERY_BROKER_TRANSPORT", None)
    try:
        with Connection(
            settings.CELERY_BROKER_URL, transport=transport, connect_timeout=CHECK_TIMEOUT, transport_options=options
        ) as broker:
            broker.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
            broker.default_channel  # noqa: B018 - opening a channel proves the broker answers
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


@get_only
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check_broker()}
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503)


@get_only
def healthz_workers(request: HttpRequest) -> JsonResponse:
    try:
        seen_at = WorkerHeartbeat.last_seen()
    except DatabaseError as exc:
        body = {"status": "stale", "last_seen_s": None, "database": f"error: {type(exc).__name__}"}
        return JsonResponse(body, status=503)
    age = None if seen_at is None else max(0.0, (timezone.now() - seen_at).total_seconds())
    alive = age is not None and age <= WORKERS_STALE_AFTER_SECONDS
    body = {"status": "ok" if alive else "stale", "last_seen_s": None if age is None else int(age)}
    return JsonResponse(body, status=200 if alive else 503)


@get_only
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(hookrelay_metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
