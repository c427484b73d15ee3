"""API versions: by URL (/api/v1/) or by header (Accept: application/vnd.hookrelay+json; version=1).

An unknown version is 404 by URL (no such route) and 406 by header (DRF's AcceptHeaderVersioning).
A version can be marked deprecated with RFC 9745 ``Deprecation`` and RFC 8594 ``Sunset`` headers,
set from ``settings.API_DEPRECATIONS``.
"""

import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from rest_framework.renderers import JSONRenderer

VERSION_IN_PATH = re.compile(r"^/api/v(\d+)/")
VERSION_IN_ACCEPT = re.compile(r"application/vnd\.hookrelay\+json\s*;\s*version\s*=\s*([^\s,;]+)")


class VendorJSONRenderer(JSONRenderer):
    media_type = "application/vnd.hookrelay+json"


def only_versioned_paths(endpoints: list, **kwargs) -> list:
    """drf-spectacular hook: document /api/v1/ once, not again under the header-negotiated /api/ mount."""
    return [endpoint for endpoint in endpoints if VERSION_IN_PATH.match(endpoint[0])]


def requested_version(request: HttpRequest) -> str:
    match = VERSION_IN_PATH.match(request.path)
    if match:
        return match.group(1)
    match = VERSION_IN_ACCEPT.search(request.headers.get("Accept", ""))
    return match.group(1) if match else settings.REST_FRAMEWORK["DEFAULT_VERSION"]


class DeprecationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        check_deprecations(settings.API_DEPRECATIONS)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith("/api/"):
            add_deprecation_headers(response, settings.API_DEPRECATIONS.get(requested_version(request), {}))
        return response


def check_deprecations(notices: dict[str, dict[str, str]]) -> None:
    """A malformed date fails at start, not as a 500 on every API request."""
    for version, notice in notices.items():
        for name, value in notice.items():
            try:
                if value:
                    parse_instant(value)
            except ValueError:
                raise ImproperlyConfigured(f"API version {version} {name}: {value!r} is not an ISO 8601 time") from None


def add_deprecation_headers(response: HttpResponse, notice: dict[str, str]) -> None:
    if notice.get("deprecation"):
        response["Deprecation"] = f"@{int(parse_instant(notice['deprecation']).timestamp())}"
    if notice.get("sunset"):
        response["Sunset"] = format_datetime(parse_instant(notice["sunset"]), usegmt=True)


def parse_instant(value: str) -> datetime:
    """ISO 8601, in UTC unless it says otherwise; RFC 8594's HTTP-date must be given in GMT."""
    instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).astimezone(UTC)
