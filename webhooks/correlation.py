"""Correlation ids: accepted or generated per request, carried to events, attempts and log lines."""

import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

HEADER = "X-Correlation-Id"
VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
current: ContextVar[str] = ContextVar("correlation_id", default="")


def new_id() -> str:
    return uuid.uuid4().hex


def get() -> str:
    return current.get()


class CorrelationIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        offered = request.headers.get(HEADER, "")
        correlation_id = offered if VALID.fullmatch(offered) else new_id()
        request.correlation_id = correlation_id
        token = current.set(correlation_id)
        try:
            response = self.get_response(request)
        finally:
            current.reset(token)
        response[HEADER] = correlation_id
        return response
