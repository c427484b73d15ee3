"""``POST /oauth/token/``: django-oauth-toolkit's token endpoint, refusing a client id no client can have."""

import base64
import binascii
from urllib.parse import unquote_plus

from django.http import HttpRequest, HttpResponse
from oauth2_provider import views
from oauthlib.oauth2.rfc6749.errors import InvalidClientError


class TokenView(views.TokenView):
    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        # PostgreSQL refuses NUL in the client lookup: a 500 unless answered here as any unknown client is.
        if any("\x00" in client_id for client_id in offered_client_ids(request)):
            return invalid_client()
        return super().post(request, *args, **kwargs)


def offered_client_ids(request: HttpRequest) -> list[str]:
    """Every client id the request offers: in the form body, and in HTTP Basic credentials (RFC 6749 section
    2.3.1: form-urlencoded, then base64), decoded as django-oauth-toolkit decodes them."""
    offered = request.POST.getlist("client_id")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Basic":
        return offered
    try:
        decoded = base64.b64decode(credentials).decode(request.encoding or "utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return offered
    return [*offered, unquote_plus(decoded.split(":", 1)[0])]


def invalid_client() -> HttpResponse:
    error = InvalidClientError()
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **error.headers}  # as oauthlib's own errors
    return HttpResponse(error.json, status=error.status_code, content_type="application/json", headers=headers)
