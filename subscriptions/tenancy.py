"""Who is calling: the OAuth2 client, its tenant and scopes, and the one queryset filter every view uses."""

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet
from oauth2_provider.contrib.rest_framework import OAuth2Authentication
from oauth2_provider.models import AccessToken, Application
from oauth2_provider.scopes import BaseScopes
from rest_framework import exceptions, permissions
from rest_framework.request import Request

from config.db import planned_once
from subscriptions.models import ApiClient, Tenant

PLATFORM = None


class ClientScopes(BaseScopes):
    """django-oauth-toolkit scopes backend: a client may ask for its own scopes, and gets all of them by default."""

    def get_all_scopes(self) -> dict[str, str]:
        return settings.API_SCOPES

    def get_available_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        client = ApiClient.objects.filter(application=application).first() if application else None
        return client.scope_list if client else []

    def get_default_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        return self.get_available_scopes(application, request)


class TokenAuthentication(OAuth2Authentication):
    """django-oauth-toolkit's bearer token check, with the token, its client and the client's tenant read
    in one precompiled query on PostgreSQL. DOT's own check compiles a five-table ORM query per request,
    and the client and tenant took another: together about 60% of an ingest request's CPU.

    Nothing is trusted between requests: a deleted client or an expired or revoked token is refused on
    its next request. What a check found is remembered only as a hint (``Caller``) that the statement
    acting on it confirms. Anything but a current, unrestricted bearer token of an API client goes to DOT
    itself, so every refusal keeps DOT's answer and ``WWW-Authenticate`` challenge. A request without a
    bearer token in its Authorization header is anonymous, whatever it carries elsewhere.
    """

    def authenticate(self, request: Request) -> tuple | None:
        token = bearer_token(request)
        if token is None:
            # Only the Authorization header carries a token: one in a URL ends up in logs and proxies'
            # histories, and oauthlib would also take one from the query string or the form body.
            return None
        access_token = load_access_token(token) if connection.vendor == "postgresql" else None
        if access_token is None or access_token.is_expired() or not access_token.application.is_usable(request):
            return self.authenticate_with_dot(request)
        remember_caller(token, access_token)
        return access_token.user, access_token

    def authenticate_with_dot(self, request: Request) -> tuple:
        """DOT's own check; a token it refuses is 401 saying so, not the "not provided" of a missing one."""
        user_and_token = super().authenticate(request)
        if user_and_token is None:
            raise exceptions.AuthenticationFailed("The access token is invalid or has expired.")
        return user_and_token


def bearer_token(request: Request) -> str | None:
    # As oauthlib reads the header (oauthlib.oauth2.rfc6749.tokens.get_token_from_header).
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else None


# Columns in each model's field order: Model.from_db takes a partial row in that order. Tokens restricted
# to an RFC 8707 resource are left to DOT, which checks their audience.
TOKEN_FIELDS = ["id", "user_id", "application_id", "expires", "scope"]
CLIENT_FIELDS = ["id", "application_id", "tenant_id", "scopes", "rate_limit", "created_at"]
TENANT_FIELDS = ["id", "slug", "name", "created_at"]
ACCESS_SQL = (
    "SELECT t.id, t.user_id, t.application_id, t.expires, t.scope, "
    "c.id, c.application_id, c.tenant_id, c.scopes, c.rate_limit, c.created_at, "
    "n.id, n.slug, n.name, n.created_at "
    "FROM oauth2_provider_accesstoken t "
    "JOIN subscriptions_apiclient c ON c.application_id = t.application_id "
    "LEFT JOIN subscriptions_tenant n ON n.id = c.tenant_id "
    "WHERE t.token_checksum = %s AND t.resource = '[]'::jsonb"
)


def load_access_token(token: str) -> AccessToken | None:
    """The token with its application (id only), API client and tenant attached, or None."""
    with planned_once() as cursor:
        cursor.execute(ACCESS_SQL, [token_checksum(token)])
        row = cursor.fetchone()
    if row is None:
        return None
    db = connection.alias
    access_token = AccessToken.from_db(db, TOKEN_FIELDS, row[:5])
    client = ApiClient.from_db(db, CLIENT_FIELDS, row[5:11])
    client.tenant = Tenant.from_db(db, TENANT_FIELDS, row[11:]) if client.tenant_id else None
    access_token.application = Application.from_db(db, ["id"], [access_token.application_id])
    access_token.application.api_client = client
    return access_token


@dataclass(frozen=True)
class Caller:
    """What the last full check of a bearer token found: its client, the client's tenant, the token's scope.

    Only a hint, remembered per process: a request that acts on it without authenticating has the
    database confirm all of it (``CALLER_CONFIRMED_SQL``) in the very statement that acts, so a token
    revoked, expired or moved to another client or tenant since acts on nothing (``webhooks.ingest``).
    """

    checksum: str
    client_id: int
    tenant: Tenant | None
    scope: str

    def may(self, scope: str) -> bool:
        return scope in self.scope.split()  # as DOT's AccessToken.allow_scopes() reads it

    def confirmed(self, now: datetime) -> tuple[str, dict]:
        """SQL true while the token still grants this, and its named parameters."""
        return CALLER_CONFIRMED_SQL, {
            "caller_checksum": self.checksum,
            "caller_now": now,
            "caller_scope": self.scope,
            "caller_client": self.client_id,
            "caller_tenant": self.tenant.pk if self.tenant else None,
            "caller_tenant_slug": self.tenant.slug if self.tenant else None,
        }


# What TokenAuthentication (ACCESS_SQL) and DOT would accept of the caller: a current, unrestricted token
# with this scope, of this API client, of this tenant (or of none, with no tenant).
CALLER_CONFIRMED_SQL = (
    "EXISTS (SELECT 1 FROM oauth2_provider_accesstoken t "
    "JOIN subscriptions_apiclient c ON c.application_id = t.application_id "
    "LEFT JOIN subscriptions_tenant n ON n.id = c.tenant_id "
    "WHERE t.token_checksum = %(caller_checksum)s::varchar AND t.resource = '[]'::jsonb "
    "AND t.expires > %(caller_now)s::timestamptz AND t.scope = %(caller_scope)s::text "
    "AND c.id = %(caller_client)s::bigint AND c.tenant_id IS NOT DISTINCT FROM %(caller_tenant)s::varchar "
    "AND n.slug IS NOT DISTINCT FROM %(caller_tenant_slug)s::varchar)"
)
REMEMBERED_CALLERS = 10_000
_callers: dict[str, Caller] = {}


def remember_caller(token: str, access_token: AccessToken) -> None:
    client = access_token.application.api_client
    checksum = token_checksum(token)
    if len(_callers) >= REMEMBERED_CALLERS:
        _callers.clear()
    _callers[checksum] = Caller(checksum, client.pk, client.tenant, access_token.scope)


def remembered_caller(token: str) -> Caller | None:
    """The hint a full check of ``token`` left in this process, if any (see ``Caller``)."""
    return _callers.get(token_checksum(token))


def token_checksum(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()  # as DOT's TokenChecksumField stores it


def api_client(request: Request) -> ApiClient:
    """The calling client, looked up once per request (TokenAuthentication loads it with the token)."""
    if not hasattr(request, "_api_client"):
        request._api_client = client_of(getattr(request.auth, "application", None))
        if request._api_client is None:
            raise exceptions.AuthenticationFailed("this token's client is not an API client")
    return request._api_client


def client_of(application: Application | None) -> ApiClient | None:
    if application is not None and Application.api_client.is_cached(application):
        return getattr(application, "api_client", None)
    return ApiClient.objects.select_related("tenant").filter(application=application).first()


def caller_tenant(request: Request) -> Tenant | None:
    """The caller's tenant; None for a platform client, which sees every tenant."""
    return api_client(request).tenant


def scope_to_caller(queryset: QuerySet, request: Request, path: str = "tenant") -> QuerySet:
    tenant = caller_tenant(request)
    return queryset if tenant is PLATFORM else queryset.filter(**{path: tenant})


def tenant_for_write(request: Request, slug: str | None) -> Tenant | None:
    """The tenant a new object belongs to (docs/api.md).

    A tenant client names its own tenant or none; another is 403. A platform client may name any
    tenant; an unknown slug is 400.
    """
    own = caller_tenant(request)
    if not slug:
        return own
    if own is not PLATFORM:
        if slug != own.slug:
            raise exceptions.PermissionDenied("a client may only act for its own tenant")
        return own
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise exceptions.ValidationError({"tenant": [f"unknown tenant {slug!r}"]}) from None


class TenantScopedMixin:
    """Every queryset filtered by the caller's tenant, so no view can forget it; another tenant's row is 404."""

    tenant_path = "tenant"

    def get_queryset(self) -> QuerySet:
        return scope_to_caller(super().get_queryset(), self.request, self.tenant_path)


class HasScope(permissions.BasePermission):
    """The view's ``required_scopes`` maps an action to the scope it needs; a missing scope is 403."""

    def has_permission(self, request: Request, view) -> bool:
        if request.auth is None:
            raise exceptions.NotAuthenticated()
        scopes = getattr(view, "required_scopes", None)
        if scopes is None:  # a view that names no scopes serves nobody
            return False
        required = scopes.get(getattr(view, "action", None) or request.method.lower())
        if required is None:
            return True
        if not request.auth.is_valid([required]):
            self.message = f"this token lacks the {required} scope"
            return False
        return True
