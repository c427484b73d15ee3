"""Hostile input gets a 4xx, never a 5xx (CONTRACT.md sections 2 and 3).

PostgreSQL refuses NUL in text where SQLite stores it, so every test here runs on both: plainly on SQLite,
and on PostgreSQL when DATABASE_URL names one.
"""

import base64
import json

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse

from config.parsers import MAX_JSON_DEPTH
from deliveries.models import Delivery
from subscriptions.models import Subscription, Tenant
from subscriptions.tenancy import remembered_caller
from tests.conftest import Api, basic_auth
from webhooks import publish

pytestmark = pytest.mark.django_db

NUL_ID = "%00"


@pytest.fixture
def subscription(acme_api: Api) -> Subscription:
    return Subscription.objects.create(
        url="https://hooks.example.com/", events=["order.#"], tenant=Tenant.objects.get(slug="acme")
    )


@pytest.fixture
def delivery(subscription: Subscription) -> Delivery:
    return Delivery.objects.get(event=publish("order.created", {"n": 1}, tenant="acme"))


def answered_in_json(response: HttpResponse) -> dict:
    assert response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    return json.loads(response.content)


# --- NUL in a path: an id that cannot exist is 404 ---

ID_ROUTES = [
    ("GET", "subscriptions/{id}/"),
    ("PATCH", "subscriptions/{id}/"),
    ("PUT", "subscriptions/{id}/"),
    ("DELETE", "subscriptions/{id}/"),
    ("GET", "subscriptions/{id}/secret/"),
    ("POST", "subscriptions/{id}/rotate-secret/"),
    ("POST", "subscriptions/{id}/ping/"),
    ("POST", "subscriptions/{id}/recover/"),
    ("GET", "deliveries/{id}/"),
    ("POST", "deliveries/{id}/redeliver/"),
]


@pytest.mark.parametrize("prefix", ["/api/v1/", "/api/"])
@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
@pytest.mark.parametrize("bad_id", [NUL_ID, "sub%00", "%00%00%00"])
def test_an_id_with_a_nul_is_404_on_every_id_route(
    platform_api: Api, method: str, route: str, prefix: str, bad_id: str
) -> None:
    response = platform_api.http.generic(method, prefix + route.format(id=bad_id), b"{}", "application/json")

    assert response.status_code == 404
    assert set(answered_in_json(response)) == {"detail"}


def test_a_real_id_with_a_nul_appended_is_404_not_the_object(acme_api: Api, subscription: Subscription) -> None:
    assert acme_api.get(f"/api/v1/subscriptions/{subscription.id}/").status_code == 200

    response = acme_api.get(f"/api/v1/subscriptions/{subscription.id}%00/")

    assert response.status_code == 404
    assert "detail" in answered_in_json(response)


def test_a_nul_in_any_other_path_is_404(acme_api: Api) -> None:
    for path in ["/api/v1/subscr%00iptions/", "/api/v1/events/%00", "/%00", "/oauth/token/%00"]:
        assert acme_api.get(path).status_code == 404, path


# --- NUL in a query string or a header: 400, naming the parameter ---

LIST_FILTERS = [
    ("/api/v1/subscriptions/", "is_active"),
    ("/api/v1/subscriptions/", "event"),
    ("/api/v1/deliveries/", "subscription"),
    ("/api/v1/deliveries/", "status"),
    ("/api/v1/deliveries/", "event_type"),
    ("/api/v1/deliveries/", "event"),
    ("/api/v1/deliveries/", "page"),
    ("/api/v1/subscriptions/", "page_size"),
]


@pytest.mark.parametrize(("path", "name"), LIST_FILTERS)
@pytest.mark.parametrize("value", ["%00", "a%00b", "1%00"])
def test_a_nul_in_a_filter_is_400_naming_it(platform_api: Api, path: str, name: str, value: str) -> None:
    response = platform_api.http.generic("GET", path, QUERY_STRING=f"{name}={value}")

    assert response.status_code == 400
    assert answered_in_json(response) == {name: ["Null characters are not allowed."]}


def test_a_nul_in_a_parameter_name_is_400(acme_api: Api) -> None:
    response = acme_api.http.generic("GET", "/api/v1/subscriptions/", QUERY_STRING="is%00active=true")

    assert response.status_code == 400
    assert "detail" in answered_in_json(response)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("HTTP_X_ANYTHING", "X-Anything"),
        ("HTTP_IDEMPOTENCY_KEY", "Idempotency-Key"),
        ("HTTP_X_CORRELATION_ID", "X-Correlation-Id"),
        ("HTTP_ACCEPT", "Accept"),
        ("HTTP_COOKIE", "Cookie"),
    ],
)
def test_a_nul_in_a_header_is_400_naming_it(acme_api: Api, header: str, name: str) -> None:
    body = json.dumps({"type": "order.created", "data": {}})

    response = acme_api.http.post("/api/v1/events/", body, content_type="application/json", **{header: "a\x00b"})

    assert response.status_code == 400
    assert answered_in_json(response) == {name: ["Null characters are not allowed."]}
    assert not Delivery.objects.exists()


def test_a_nul_in_the_bearer_token_is_401(db: None) -> None:
    client = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION="Bearer abc\x00def")

    assert client.get("/api/v1/subscriptions/").status_code in (400, 401)


# --- The token endpoint: a client id with NUL is an unknown client ---


@pytest.mark.parametrize("client_id", ["\x00", "abc\x00", "\x00abc"])
def test_a_nul_in_the_form_client_id_is_401_invalid_client(acme_api: Api, client_id: str) -> None:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": acme_api.client_secret}

    response = Client(HTTP_HOST="localhost").post("/oauth/token/", form)

    assert response.status_code == 401
    assert answered_in_json(response) == {"error": "invalid_client"}


@pytest.mark.parametrize("client_id", ["\x00", "abc\x00", "abc%00"])  # Basic credentials are form-urlencoded first
def test_a_nul_in_the_basic_auth_client_id_is_401_invalid_client(acme_api: Api, client_id: str) -> None:
    response = Client(HTTP_HOST="localhost").post(
        "/oauth/token/",
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic_auth(client_id, acme_api.client_secret),
    )

    assert response.status_code == 401
    assert answered_in_json(response) == {"error": "invalid_client"}
    assert "invalid_client" in response["WWW-Authenticate"]


def test_the_real_client_id_with_a_nul_appended_gets_no_token(acme_api: Api) -> None:
    credentials = base64.b64encode(f"{acme_api.client_id}\x00:{acme_api.client_secret}".encode()).decode()

    response = Client(HTTP_HOST="localhost").post(
        "/oauth/token/", {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=f"Basic {credentials}"
    )

    assert response.status_code == 401
    assert "access_token" not in answered_in_json(response)


# --- The admin's lists, as a superuser ---


def admin_list_parameters(model_admin: admin.ModelAdmin) -> set[str]:
    """The query parameters a changelist reads: its filters (in the spellings Django uses), search, order, page."""
    names = {"q", "o", "p", "e", "all", "_facets"}
    for list_filter in model_admin.list_filter:
        if isinstance(list_filter, str):
            names |= {list_filter, f"{list_filter}__exact", f"{list_filter}__id__exact", f"{list_filter}__isnull"}
            names |= {f"{list_filter}__gte", f"{list_filter}__lt"}
        elif hasattr(list_filter, "parameter_name"):
            names.add(list_filter.parameter_name)
    return names


ADMIN_LISTS = [model._meta.label_lower for model in apps.get_models() if admin.site.is_registered(model)]


@pytest.mark.parametrize("label", ADMIN_LISTS)
def test_a_nul_in_any_admin_list_parameter_is_never_a_5xx(operator: Client, label: str) -> None:
    model = apps.get_model(label)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    operator.raise_request_exception = False

    answers = {
        (name, value): operator.get(url, {name: value}).status_code
        for name in admin_list_parameters(admin.site.get_model_admin(model))
        for value in ("\x00", "a\x00b")
    }

    assert {query: status for query, status in answers.items() if status >= 500} == {}
    assert operator.get(url).status_code == 200


def test_admin_changelist_nul_filters_are_400(operator: Client, delivery: Delivery) -> None:
    for query in ["status=%00", "q=%00", "status__exact=%00", "event_type=a%00"]:
        response = operator.generic("GET", "/admin/deliveries/delivery/", QUERY_STRING=query)
        assert response.status_code == 400, query


def test_an_admin_object_path_with_a_nul_is_404(operator: Client, delivery: Delivery) -> None:
    assert operator.get(f"/admin/deliveries/delivery/{delivery.pk}%00/change/").status_code == 404


def action_names(model_admin: admin.ModelAdmin) -> set[str]:
    return {"delete_selected"} | {a if isinstance(a, str) else a.__name__ for a in model_admin.actions or ()}


@pytest.mark.parametrize("label", ADMIN_LISTS)
def test_a_nul_in_the_ids_an_admin_action_is_given_is_400(operator: Client, delivery: Delivery, label: str) -> None:
    model = apps.get_model(label)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    operator.raise_request_exception = False

    answers = {
        (action, selected): operator.post(url, {"action": action, "_selected_action": [selected], "index": "0"})
        for action in action_names(admin.site.get_model_admin(model))
        for selected in ("\x00", f"{delivery.pk}\x00")
    }

    assert {key: response.status_code for key, response in answers.items() if response.status_code != 400} == {}


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/admin/login/", {"username": "ops\x00", "password": "pw"}),
        ("/admin/subscriptions/tenant/add/", {"slug": "a\x00", "name": "A"}),
        ("/admin/subscriptions/subscription/add/", {"url": "https://hooks.example.com/\x00", "events": "#"}),
    ],
)
def test_a_nul_in_an_admin_form_field_is_400(operator: Client, path: str, form: dict) -> None:
    operator.raise_request_exception = False

    assert operator.post(path, form).status_code == 400
    assert not Tenant.objects.filter(name="A").exists()


# --- Event data nested too deeply: 400 on the data field, on both ingest paths ---


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


def event_body(data: str) -> bytes:
    return ('{"type": "order.created", "data": ' + data + "}").encode()


def prime_the_fast_path(api: Api) -> None:
    """On PostgreSQL a client's plain publish goes below DRF once this process has checked its token in full."""
    assert api.post("/api/v1/events/", {"type": "order.created", "data": {}}).status_code == 202
    if connection.vendor == "postgresql":
        assert remembered_caller(api.token) is not None


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 320, 500, 990, 5000])
def test_data_nested_too_deeply_is_400_on_the_data_field(acme_api: Api, depth: int) -> None:
    prime_the_fast_path(acme_api)
    before = Delivery.objects.count()

    for _ in range(2):  # the first full check of a token and the request after it take different paths
        response = acme_api.http.generic("POST", "/api/v1/events/", event_body(nested(depth)), "application/json")
        assert response.status_code == 400
        assert list(answered_in_json(response)) == ["data"]

    assert Delivery.objects.count() == before


def test_data_nested_up_to_the_limit_is_published(acme_api: Api, subscription: Subscription) -> None:
    prime_the_fast_path(acme_api)
    deepest = nested(MAX_JSON_DEPTH - 2)  # the body is one level and data's own object another

    response = acme_api.http.generic("POST", "/api/v1/events/", event_body(deepest), "application/json")

    assert response.status_code == 202, response.content


def test_brackets_inside_strings_do_not_count_as_nesting(acme_api: Api) -> None:
    prime_the_fast_path(acme_api)
    data = json.dumps({"text": "[{" * 5000, "list": [[] for _ in range(200)]})

    response = acme_api.http.generic("POST", "/api/v1/events/", event_body(data), "application/json")

    assert response.status_code == 202, response.content


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (('{"type": ' + nested(400, '"x"') + ', "data": {}}').encode(), "type"),
        (b'{"url": "https://hooks.example.com/", "events": ' + b"[" * 400 + b"]" * 400 + b"}", "events"),
    ],
)
def test_any_deep_field_is_named_in_the_400(acme_api: Api, body: bytes, field: str) -> None:
    path = "/api/v1/events/" if field == "type" else "/api/v1/subscriptions/"

    response = acme_api.http.generic("POST", path, body, "application/json")

    assert response.status_code == 400
    assert list(answered_in_json(response)) == [field]


def test_a_deep_body_that_is_not_an_object_is_400(acme_api: Api) -> None:
    response = acme_api.http.generic("POST", "/api/v1/events/", b"[" * 1000 + b"]" * 1000, "application/json")

    assert response.status_code == 400
    assert "detail" in answered_in_json(response)


# --- A token anywhere but the Authorization header is ignored ---


def test_a_token_in_the_query_string_is_ignored(acme_api: Api, subscription: Subscription) -> None:
    anonymous = Client(HTTP_HOST="localhost")

    for path in ["/api/v1/subscriptions/", f"/api/v1/subscriptions/{subscription.id}/secret/"]:
        response = anonymous.get(path, {"access_token": acme_api.token})
        assert response.status_code == 401, path
        assert "secret" not in answered_in_json(response)


def test_a_token_in_a_form_body_is_ignored(acme_api: Api, subscription: Subscription) -> None:
    anonymous = Client(HTTP_HOST="localhost")
    form = {"access_token": acme_api.token, "type": "order.created"}

    for path in ["/api/v1/events/", f"/api/v1/subscriptions/{subscription.id}/rotate-secret/"]:
        response = anonymous.post(path, form)
        assert response.status_code == 401, path

    assert Subscription.objects.get(pk=subscription.pk).secret == subscription.secret


def test_a_missing_header_token_is_reported_as_missing(acme_api: Api) -> None:
    response = Client(HTTP_HOST="localhost").get("/api/v1/subscriptions/", {"access_token": acme_api.token})

    assert "not provided" in answered_in_json(response)["detail"]


def test_the_header_token_works_whatever_the_query_string_says(acme_api: Api) -> None:
    assert acme_api.get("/api/v1/subscriptions/", data={"access_token": "forged"}).status_code == 200


# --- List filters: a value that is not valid for its filter is 400, never ignored ---


@pytest.mark.parametrize(
    ("value", "active"), [("true", True), ("1", True), ("TRUE", True), ("false", False), ("0", False)]
)
def test_is_active_takes_true_false_1_and_0(
    acme_api: Api, subscription: Subscription, value: str, active: bool
) -> None:
    Subscription.objects.create(
        url="https://hooks.example.com/off", events=["#"], tenant=subscription.tenant, is_active=False
    )

    results = acme_api.get("/api/v1/subscriptions/", data={"is_active": value}).json()["results"]

    assert [row["is_active"] for row in results] == [active]


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/v1/subscriptions/", {"is_active": "maybe"}),
        ("/api/v1/subscriptions/", {"is_active": "yes"}),
        ("/api/v1/subscriptions/", {"is_active": "2"}),
        ("/api/v1/subscriptions/", {"event": "Order.Created"}),
        ("/api/v1/subscriptions/", {"event": "order.*"}),
        ("/api/v1/subscriptions/", {"event": "a" * 129}),
        ("/api/v1/deliveries/", {"status": "done"}),
        ("/api/v1/deliveries/", {"event_type": "order..created"}),
        ("/api/v1/deliveries/", {"event_type": "#"}),
        ("/api/v1/deliveries/", {"page": "0"}),
        ("/api/v1/deliveries/", {"page": "x"}),
        ("/api/v1/subscriptions/", {"page_size": "-5"}),
        ("/api/v1/subscriptions/", {"page_size": "1.5"}),
    ],
)
def test_a_filter_value_its_filter_cannot_use_is_400_naming_it(
    acme_api: Api, subscription: Subscription, path: str, query: dict
) -> None:
    response = acme_api.get(path, data=query)

    assert response.status_code == 400
    assert list(answered_in_json(response)) == list(query)


def test_every_valid_delivery_filter_still_filters(acme_api: Api, delivery: Delivery) -> None:
    Subscription.objects.create(
        url="https://hooks.example.com/i", events=["invoice.*"], tenant=delivery.subscription.tenant
    )
    other = Delivery.objects.get(event=publish("invoice.paid", {}, tenant="acme"))
    Delivery.objects.filter(pk=other.pk).update(status="failed", next_attempt_at=None)
    queries = [
        {"subscription": delivery.subscription_id},
        {"status": "pending"},
        {"event_type": "order.created"},
        {"event": delivery.event_id},
    ]
    for query in queries:
        results = acme_api.get("/api/v1/deliveries/", data=query).json()["results"]
        assert [row["id"] for row in results] == [delivery.id], query
    assert acme_api.get("/api/v1/deliveries/", data={"subscription": "sub_unknown"}).json()["count"] == 0


# --- A body over the limit is 413 wherever it is sent ---


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/subscriptions/"),
        ("PATCH", "/api/v1/subscriptions/{id}/"),
        ("PUT", "/api/v1/subscriptions/{id}/"),
        ("POST", "/api/v1/subscriptions/{id}/rotate-secret/"),
        ("POST", "/api/v1/subscriptions/{id}/recover/"),
        ("POST", "/api/v1/events/"),
    ],
)
def test_a_body_over_the_upload_limit_is_413(
    acme_api: Api, subscription: Subscription, settings, method: str, path: str
) -> None:
    body = json.dumps({"description": "d" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}).encode()

    response = acme_api.http.generic(method, path.format(id=subscription.id), body, "application/json")

    assert response.status_code == 413
    assert "detail" in answered_in_json(response)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100 + b'"' + b'\\"' * 5000,  # an unterminated string full of escaped quotes
        b'{"data": "' + b"[" * 100 + b"\\",
        b'{"data": ' + b"[" * 100 + b'"]]]}',
    ],
)
def test_a_malformed_body_with_many_brackets_is_400(acme_api: Api, body: bytes) -> None:
    response = acme_api.http.generic("POST", "/api/v1/events/", body, "application/json")

    assert response.status_code == 400
    assert answered_in_json(response)
