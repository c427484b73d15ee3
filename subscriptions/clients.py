"""API clients: an OAuth2 application for the client credentials grant, with a tenant and scopes."""

import re
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import Application

from subscriptions.models import ApiClient, Tenant

SLUG = re.compile(r"^[a-z0-9-]{1,50}$")


class ClientError(ValueError):
    pass


@dataclass(frozen=True)
class NewClient:
    client: ApiClient
    client_secret: str  # shown once: only a hash is stored


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = [scope for scope in scopes if scope not in settings.API_SCOPES]
    if unknown:
        raise ClientError(f"unknown scope {unknown[0]!r}; known scopes: {' '.join(settings.API_SCOPES)}")
    return list(dict.fromkeys(scopes))


@transaction.atomic
def create_api_client(name: str, tenant_slug: str | None = None, scopes: list[str] | None = None) -> NewClient:
    scopes = check_scopes(scopes if scopes is not None else list(settings.API_SCOPES))
    tenant = None
    if tenant_slug is not None:
        if not SLUG.fullmatch(tenant_slug):
            raise ClientError(f"malformed tenant slug {tenant_slug!r}: use 1 to 50 of a-z, 0-9 and '-'")
        tenant, _ = Tenant.objects.get_or_create(slug=tenant_slug, defaults={"name": tenant_slug})
    secret = generate_client_secret()
    application = Application.objects.create(
        name=name,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
    )
    client = ApiClient.objects.create(application=application, tenant=tenant, scopes=" ".join(scopes))
    return NewClient(client, secret)
