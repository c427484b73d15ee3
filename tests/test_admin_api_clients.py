"""Admins create and revoke API clients in the admin."""

import re

from django.test import Client
from oauth2_provider.models import AccessToken, Application

from subscriptions.models import ApiClient, Tenant
from tests.conftest import basic_auth


def test_an_admin_creates_a_client_and_sees_its_secret_once(operator: Client, acme: Tenant) -> None:
    response = operator.post(
        "/admin/subscriptions/apiclient/add/",
        {"name": "shop", "tenant": acme.pk, "scope_list": ["events.publish", "deliveries.read"]},
        follow=True,
    )

    assert response.status_code == 200
    client = ApiClient.objects.get(application__name="shop")
    assert (client.tenant, client.scope_list) == (acme, ["events.publish", "deliveries.read"])
    message = next(str(m) for m in response.context["messages"])
    secret = re.search(r"client secret (\S+)", message).group(1)
    token = Client(HTTP_HOST="localhost").post(
        "/oauth/token/",
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic_auth(client.application.client_id, secret),
    )
    assert token.status_code == 200
    assert token.json()["scope"] == "events.publish deliveries.read"


def test_deleting_a_client_revokes_its_tokens(operator: Client, make_api) -> None:
    api = make_api(tenant="acme")
    client = ApiClient.objects.get(application__client_id=api.client_id)

    response = operator.post(f"/admin/subscriptions/apiclient/{client.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Application.objects.filter(client_id=api.client_id).exists()
    assert not AccessToken.objects.filter(token=api.token).exists()
    assert api.get("/api/v1/subscriptions/").status_code == 401
