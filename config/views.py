from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from kombu import Connection

from config import metrics as hookrelay_metrics

CHECK_TIMEOUT = 2.0


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
    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=CHECK_TIMEOUT, transport_options=options) as broker:
            broker.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
            broker.default_channel  # noqa: B018 - opening a channel proves the broker answers
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check_broker()}
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(hookrelay_metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
