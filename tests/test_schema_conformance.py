"""The OpenAPI schema tells the truth (docs/api.md).

It declares the OAuth2 client-credentials flow and each operation's scope, documents every status an
operation answers, and states every rule the validators enforce. The last test runs schemathesis with all
of its checks against a live server: any undocumented status, header or response shape, any request the
schema allows but the server refuses (or the reverse) fails it.
"""

import base64
import ipaddress
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from django.conf import settings
from django.test import Client, override_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError
from rest_framework.fields import Field

from subscriptions import schema, signing
from subscriptions.clients import create_api_client
from subscriptions.models import Subscription, Tenant
from subscriptions.serializers import SubscriptionCreateSerializer, SubscriptionSerializer
from tests.conftest import Api, basic_auth
from webhooks import publish
from webhooks.serializers import EventCreateSerializer

# The scope each operation needs (docs/api.md); event types need only a valid token.
SCOPES = {
    "subscriptions_list": ["subscriptions.read"],
    "subscriptions_create": ["subscriptions.write"],
    "subscriptions_retrieve": ["subscriptions.read"],
    "subscriptions_update": ["subscriptions.write"],
    "subscriptions_partial_update": ["subscriptions.write"],
    "subscriptions_destroy": ["subscriptions.write"],
    "subscriptions_secret_retrieve": ["subscriptions.read"],
    "subscriptions_rotate_secret_create": ["subscriptions.write"],
    "subscriptions_ping_create": ["subscriptions.write"],
    "subscriptions_recover_create": ["deliveries.write"],
    "events_create": ["events.publish"],
    "event_types_retrieve": [],
    "deliveries_list": ["deliveries.read"],
    "deliveries_retrieve": ["deliveries.read"],
    "deliveries_redeliver_create": ["deliveries.write"],
}


@pytest.fixture
def openapi(client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def operations(openapi: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def resolve(openapi: dict, node: dict) -> dict:
    while "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        node = openapi["components"][kind][name]
    return node


def test_it_declares_the_client_credentials_flow_with_every_scope(openapi: dict) -> None:
    assert openapi["components"]["securitySchemes"]["oauth2"]["type"] == "oauth2"
    assert openapi["components"]["securitySchemes"]["oauth2"]["flows"] == {
        "clientCredentials": {"tokenUrl": "/oauth/token/", "scopes": settings.API_SCOPES}
    }


def test_each_operation_requires_the_scope_its_view_checks(openapi: dict) -> None:
    found = {operation["operationId"]: operation["security"] for _, _, operation in operations(openapi)}
    assert found == {operation_id: [{"oauth2": scopes}] for operation_id, scopes in SCOPES.items()}


def test_the_docs_page_keeps_what_authorize_fetched(client) -> None:
    page = client.get("/api/docs/").content.decode()
    assert '"persistAuthorization": true' in page
    assert "/api/schema/" in page


@pytest.mark.parametrize("in_body", [False, True])
def test_the_token_url_answers_what_swagger_ui_sends(make_api, in_body: bool) -> None:
    """Authorize posts a form with the ticked scopes, and the client id and secret in Basic auth or the form."""
    api: Api = make_api(tenant=None, scopes=["subscriptions.read", "events.publish"])
    form = {"grant_type": "client_credentials", "scope": "subscriptions.read"}
    headers = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest", "HTTP_ACCEPT": "application/json, text/plain, */*"}
    if in_body:
        form |= {"client_id": api.client_id, "client_secret": api.client_secret}
    else:
        headers["HTTP_AUTHORIZATION"] = basic_auth(api.client_id, api.client_secret)
    # A browser's request, CSRF checks included: Swagger UI sends no CSRF token.
    browser = Client(enforce_csrf_checks=True, HTTP_HOST="localhost")
    response = browser.post("/oauth/token/", urlencode(form), "application/x-www-form-urlencoded", **headers)
    assert response.status_code == 200, response.content
    assert response.json()["scope"] == "subscriptions.read"
    granted = browser.get("/api/v1/subscriptions/", HTTP_AUTHORIZATION=f"Bearer {response.json()['access_token']}")
    assert granted.status_code == 200


def test_every_operation_documents_the_common_errors_as_json(openapi: dict) -> None:
    for path, method, operation in operations(openapi):
        responses = operation["responses"]
        expected = {"401", "406", "429"} | ({"403"} if SCOPES[operation["operationId"]] else set())
        expected |= {"404"} if "{id}" in path or operation["operationId"].endswith("_list") else set()
        expected |= {"400", "413", "415"} if "requestBody" in operation else set()
        assert expected <= set(responses), (method, path)
        for status in expected:
            content = resolve(openapi, responses[status])["content"]
            assert set(content) == {"application/json", "application/vnd.hookrelay+json"}, (method, path, status)
        assert resolve(openapi, responses["429"])["headers"]["Retry-After"]["required"] is True


def test_it_documents_each_operations_own_answers_and_headers(openapi: dict) -> None:
    paths = openapi["paths"]
    assert "Location" in paths["/api/v1/subscriptions/"]["post"]["responses"]["201"]["headers"]
    assert {"200", "202", "422"} <= set(paths["/api/v1/events/"]["post"]["responses"])
    assert "Idempotent-Replayed" in paths["/api/v1/events/"]["post"]["responses"]["200"]["headers"]
    assert "409" in paths["/api/v1/subscriptions/{id}/recover/"]["post"]["responses"]
    assert "409" in paths["/api/v1/deliveries/{id}/redeliver/"]["post"]["responses"]
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Correlation-Id"):
        assert name in paths["/api/v1/deliveries/"]["get"]["responses"]["200"]["headers"]


def test_it_states_the_rules_the_validators_enforce(openapi: dict) -> None:
    schemas = openapi["components"]["schemas"]
    subscription = schemas["SubscriptionCreateRequest"]["properties"]
    assert subscription["url"]["maxLength"] == 2048
    assert subscription["url"]["format"] == "iri"
    assert (subscription["events"]["minItems"], subscription["events"]["maxItems"]) == (1, 100)
    assert subscription["events"]["items"]["maxLength"] == 128
    assert subscription["description"]["maxLength"] == 500
    assert subscription["description"]["not"] == {"pattern": "\\u0000"}
    assert subscription["secret"]["pattern"] == schema.SECRET_PATTERN
    assert schemas["EventCreateRequest"]["properties"]["type"]["maxLength"] == 128
    assert schemas["EventCreateRequest"]["properties"]["data"]["type"] == "object"
    parameters = {p["name"]: p["schema"] for p in openapi["paths"]["/api/v1/subscriptions/"]["get"]["parameters"]}
    assert parameters["is_active"]["type"] == "boolean"
    assert parameters["page"]["minimum"] == parameters["page_size"]["minimum"] == 1
    parameters = {p["name"]: p["schema"] for p in openapi["paths"]["/api/v1/deliveries/"]["get"]["parameters"]}
    assert parameters["status"]["enum"] == ["cancelled", "failed", "pending", "succeeded"]
    parameters = {p["name"]: p["schema"] for p in openapi["paths"]["/api/v1/events/"]["post"]["parameters"]}
    assert parameters["Idempotency-Key"] == schema.IDEMPOTENCY_KEY


# --- The schema's patterns against the fields that validate: the same answer for any string ---

PATTERN_TEXT = st.text(alphabet="ab9_-.*#Z \t", max_size=40) | st.text(max_size=20)
PROPERTY = hypothesis_settings(max_examples=300, deadline=None, database=None)


def accepts(field: Field, value: str) -> bool:
    with override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True):
        try:
            field.run_validation(value)
        except ValidationError:
            return False
    return True


def stated(rule: dict, value: str) -> bool:
    """What the schema says of ``value``: its length is the trimmed value's, which the field measures."""
    if "not" in rule and re.search(rule["not"]["pattern"], value):
        return False
    within = len(value.strip()) <= rule.get("maxLength", len(value))
    return within and bool(re.fullmatch(rule.get("pattern", ".*"), value, re.DOTALL))


@PROPERTY
@given(st.from_regex(schema.EVENT_PATTERN["pattern"], fullmatch=True) | PATTERN_TEXT)
def test_the_event_pattern_rule_is_the_fields(value: str) -> None:
    field = SubscriptionSerializer().fields["events"]
    assert stated(schema.EVENT_PATTERN, value) == accepts(field, [value])


@PROPERTY
@given(st.from_regex(schema.EVENT_TYPE["pattern"], fullmatch=True) | PATTERN_TEXT | st.just("webhook.ping"))
def test_the_event_type_rule_is_the_fields(value: str) -> None:
    assert stated(schema.EVENT_TYPE, value) == accepts(EventCreateSerializer().fields["type"], value)


@PROPERTY
@given(st.binary(min_size=20, max_size=70), st.sampled_from(["", "=", "==", "A", "B=", "x", " "]))
def test_the_secret_rule_is_the_fields(key: bytes, tail: str) -> None:
    field = SubscriptionCreateSerializer().fields["secret"]
    encoded = base64.b64encode(key).decode()
    for value in (signing.PREFIX + encoded, signing.PREFIX + encoded.rstrip("=") + tail):
        assert stated(schema.SECRET, value) == accepts(field, value), value


@PROPERTY
@given(st.from_regex(schema.URL_PATTERN, fullmatch=True) | st.text(max_size=30).map(lambda s: "http://" + s))
def test_the_url_rule_is_the_fields_where_private_networks_are_allowed(value: str) -> None:
    """The address rule depends on DNS and a setting, so the schema says it in words; the rest is the pattern."""
    assert stated(schema.URL, value) == accepts(SubscriptionSerializer().fields["url"], value), value


@PROPERTY
@given(st.text(max_size=600))
def test_the_description_rule_is_the_fields(value: str) -> None:
    assert stated(schema.DESCRIPTION, value) == accepts(SubscriptionSerializer().fields["description"], value)


# --- schemathesis, all checks, against a live server ---

# What no schema can say (a repeated idempotency key, NUL in object keys), for schemathesis run from here too.
SCHEMATHESIS_CONFIG = Path(__file__).resolve().parent.parent / "schemathesis.toml"


@pytest.fixture
def only_local_connections(live_server, monkeypatch) -> None:
    """Nothing the server does (a ping to a generated URL above all) leaves this process but for Redis."""
    ports = {urlsplit(live_server.url).port}
    if settings.REDIS_URL:
        ports.add(urlsplit(settings.REDIS_URL).port or 6379)
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not (
            ipaddress.ip_address(address[0]).is_loopback and address[1] in ports
        ):
            raise ConnectionRefusedError(f"this test connects to nothing but itself and Redis, not {address[0]}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def seeded(transactional_db) -> None:
    """A tenant with a subscription and a delivery, so lists and links return real objects."""
    acme, _ = Tenant.objects.get_or_create(slug="acme", defaults={"name": "Acme"})
    Subscription.objects.create(url="https://hooks.example.com/", events=["#"], tenant=acme)
    publish("order.created", {"n": 1}, tenant=acme)


def test_schemathesis_finds_no_difference_between_the_schema_and_the_server(
    live_server, seeded, allow_loopback, only_local_connections, tmp_path: Path
) -> None:
    """Every check, every phase (examples, coverage, fuzzing, stateful), as a tenant client with every scope.

    A tenant client, because a platform client naming a tenant that does not exist is refused with 400 by
    data, not by shape. Private networks are allowed because the address rule depends on DNS and a setting
    (the schema states it in words); ``only_local_connections`` keeps every send from leaving the machine.
    ``schemathesis.toml`` says what the schema cannot (no NUL is generated: see there).
    """
    new = create_api_client("schemathesis", "acme")
    token = requests.post(
        f"{live_server.url}/oauth/token/",
        data={"grant_type": "client_credentials"},
        auth=(new.client.application.client_id, new.client_secret),
        timeout=10,
    ).json()["access_token"]
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG), "--no-color", "run"]
    command += [f"{live_server.url}/api/schema/", "--checks", "all", "-H", f"Authorization: Bearer {token}"]
    command += ["--max-examples", "15", "--seed", "1", "--workers", "1", "--generation-database", "none"]
    command += ["--request-timeout", "30", "--report-dir", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
