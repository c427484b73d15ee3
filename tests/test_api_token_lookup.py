"""TokenAuthentication: the token, its client and tenant in one query, and nothing trusted between requests."""

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application

from subscriptions.models import ApiClient, Subscription, Tenant
from tests.conftest import Api
from webhooks.models import Event

pytestmark = pytest.mark.django_db
EVENT = {"type": "order.created", "data": {"n": 1}}


@pytest.fixture
def acme_client(make_api: Callable[..., Api]) -> Api:
    api = make_api(tenant="acme", scopes=["events.publish", "subscriptions.read"])
    assert api.post("/api/v1/events/", EVENT).status_code == 202
    return api


def token_of(api: Api) -> AccessToken:
    return AccessToken.objects.get(token=api.token)


def test_a_revoked_token_is_refused_on_its_next_request(acme_client: Api) -> None:
    token_of(acme_client).revoke()

    response = acme_client.post("/api/v1/events/", EVENT)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith('Bearer realm="api"')


def test_a_token_that_expires_is_refused_on_its_next_request(acme_client: Api) -> None:
    AccessToken.objects.filter(token=acme_client.token).update(expires=timezone.now() - timedelta(seconds=1))

    response = acme_client.post("/api/v1/events/", EVENT)

    assert response.status_code == 401
    assert 'error="invalid_token"' in response["WWW-Authenticate"]


def test_a_deleted_application_is_refused_on_its_next_request(acme_client: Api) -> None:
    Application.objects.filter(client_id=acme_client.client_id).delete()

    assert acme_client.post("/api/v1/events/", EVENT).status_code == 401


def test_a_token_whose_api_client_is_gone_is_refused(acme_client: Api) -> None:
    ApiClient.objects.filter(application__client_id=acme_client.client_id).delete()

    assert acme_client.post("/api/v1/events/", EVENT).status_code == 401


def test_a_tenant_change_applies_on_the_next_request(acme_client: Api) -> None:
    globex = Tenant.objects.create(slug="globex")
    ApiClient.objects.filter(application__client_id=acme_client.client_id).update(tenant=globex)

    response = acme_client.post("/api/v1/events/", EVENT)

    assert response.status_code == 202
    assert response.json()["tenant"] == "globex"


def test_scopes_are_read_from_the_token_each_request(acme_client: Api) -> None:
    AccessToken.objects.filter(token=acme_client.token).update(scope="subscriptions.read")

    response = acme_client.post("/api/v1/events/", EVENT)

    assert response.status_code == 403
    assert "events.publish" in response.json()["detail"]


def test_a_token_restricted_to_another_resource_is_refused(acme_client: Api) -> None:
    # RFC 8707: the audience check stays with django-oauth-toolkit.
    AccessToken.objects.filter(token=acme_client.token).update(resource=["https://elsewhere.example/api/"])

    assert acme_client.post("/api/v1/events/", EVENT).status_code == 401


def test_a_token_in_the_query_string_is_ignored_as_the_contract_says(acme_client: Api) -> None:
    acme_client.http.credentials()

    response = acme_client.http.get(f"/api/v1/subscriptions/?access_token={acme_client.token}")

    assert response.status_code == 401


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-query lookup is PostgreSQL's")
def test_the_token_client_and_tenant_take_one_query(acme_client: Api) -> None:
    with CaptureQueriesContext(connection) as queries:
        response = acme_client.post("/api/v1/events/", EVENT)

    assert response.status_code == 202
    lookups = [q["sql"] for q in queries.captured_queries if "oauth2_provider" in q["sql"] or "apiclient" in q["sql"]]
    assert len(lookups) == 1, lookups
    assert Event.objects.filter(tenant__slug="acme").count() == 2


def test_a_tenant_client_reads_only_its_tenants_subscriptions(acme_client: Api, globex: Tenant) -> None:
    Subscription.objects.create(url="https://a.example/hook", events=["#"], tenant=Tenant.objects.get(slug="acme"))
    Subscription.objects.create(url="https://g.example/hook", events=["#"], tenant=globex)

    response = acme_client.get("/api/v1/subscriptions/")

    assert [s["url"] for s in response.json()["results"]] == ["https://a.example/hook"]
