"""Who is calling: the OAuth2 client, its tenant and scopes, and the one queryset filter every view uses."""

from django.conf import settings
from django.db.models import QuerySet
from oauth2_provider.scopes import BaseScopes
from rest_framework import exceptions, permissions
from rest_framework.request import Request

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


def api_client(request: Request) -> ApiClient:
    """The calling client, looked up once per request."""
    if not hasattr(request, "_api_client"):
        application = getattr(request.auth, "application", None)
        request._api_client = ApiClient.objects.select_related("tenant").filter(application=application).first()
        if request._api_client is None:
            raise exceptions.AuthenticationFailed("this token's client is not an API client")
    return request._api_client


def caller_tenant(request: Request) -> Tenant | None:
    """The caller's tenant; None for a platform client, which sees every tenant."""
    return api_client(request).tenant


def scope_to_caller(queryset: QuerySet, request: Request, path: str = "tenant") -> QuerySet:
    tenant = caller_tenant(request)
    return queryset if tenant is PLATFORM else queryset.filter(**{path: tenant})


def tenant_for_write(request: Request, slug: str | None) -> Tenant | None:
    """The tenant a new object belongs to (CONTRACT.md section 2).

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
