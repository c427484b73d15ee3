"""CONTRACT.md section 3: POST /api/v1/events/, Idempotency-Key, event types, correlation ids, JSON errors."""

import json
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from deliveries.models import Delivery
from subscriptions.models import Subscription, Tenant
from tests.conftest import Api
from webhooks import publish
from webhooks.models import Event

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/events/"
EVENT_TYPES = "/api/v1/event-types/"
EVENT = {"type": "order.created", "data": {"id": 42, "total": "9.99"}}
LIMIT = 256 * 1024
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@pytest.fixture(autouse=True)
def fast_secret_hashing(settings: Any) -> None:
    """Client secrets are stored hashed with PBKDF2, about half a second a client; test_api_auth keeps the default."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def post_raw(api: Api, body: bytes | str, content_type: str = "application/json", **headers: str) -> Any:
    return api.http.generic("POST", EVENTS, body, content_type=content_type, **headers)


# --- POST /api/v1/events/ ---


def test_publishing_answers_202_with_the_event_and_how_many_deliveries_it_made(
    acme_api: Api, globex: Tenant, subscribe: Callable[..., Subscription]
) -> None:
    acme = Tenant.objects.get(slug="acme")
    first = subscribe("https://hooks.example.com/a", ["order.*"], tenant=acme)
    second = subscribe("https://hooks.example.com/b", ["#"], tenant=acme)
    subscribe("https://hooks.example.com/c", ["invoice.*"], tenant=acme)
    subscribe("https://hooks.example.com/d", ["#"], tenant=globex)

    response = acme_api.post(EVENTS, EVENT)

    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"id", "type", "tenant", "created_at", "deliveries"}
    assert isinstance(body["id"], str) and body["id"]
    assert body["type"] == "order.created"
    assert body["tenant"] == "acme"
    assert body["deliveries"] == 2
    assert ISO_UTC.match(body["created_at"]), body["created_at"]
    created_at = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert abs(timezone.now() - created_at) < timedelta(seconds=10)
    event = Event.objects.get(id=body["id"])
    assert event.data == EVENT["data"]
    assert set(Delivery.objects.filter(event=event).values_list("subscription_id", flat=True)) == {first.id, second.id}


def test_an_event_nobody_subscribes_to_is_accepted_with_no_deliveries(acme_api: Api) -> None:
    response = acme_api.post(EVENTS, EVENT)

    assert response.status_code == 202, response.content
    assert response.json()["deliveries"] == 0
    assert Event.objects.filter(id=response.json()["id"]).exists()


ELEVEN_WORDS = ".".join(["w"] * 11)
INVALID_BODIES = [
    ({"data": {}}, "type"),
    ({"type": 5, "data": {}}, "type"),
    ({"type": None, "data": {}}, "type"),
    ({"type": ["order.created"], "data": {}}, "type"),
    ({"type": "", "data": {}}, "type"),
    ({"type": "order.*", "data": {}}, "type"),
    ({"type": "order.#", "data": {}}, "type"),
    ({"type": "#", "data": {}}, "type"),
    ({"type": "*", "data": {}}, "type"),
    ({"type": "webhook.ping", "data": {}}, "type"),
    ({"type": "webhook.anything", "data": {}}, "type"),
    ({"type": "Order.Created", "data": {}}, "type"),
    ({"type": ELEVEN_WORDS, "data": {}}, "type"),
    ({"type": "a" * 129, "data": {}}, "type"),
    ({"type": "order..created", "data": {}}, "type"),
    ({"type": "order.created.", "data": {}}, "type"),
    ({"type": "order created", "data": {}}, "type"),
    ({"type": "ordér.created", "data": {}}, "type"),
    ({"type": "order.created"}, "data"),
    ({"type": "order.created", "data": [1, 2]}, "data"),
    ({"type": "order.created", "data": "text"}, "data"),
    ({"type": "order.created", "data": None}, "data"),
    ({"type": "order.created", "data": 7}, "data"),
    ({"type": "order.created", "data": {}, "tenant": 5}, "tenant"),
    ({"type": "order.created", "data": {}, "tenant": ["acme"]}, "tenant"),
    ({"type": "order.created", "data": {}, "tenant": {"slug": "acme"}}, "tenant"),
]


@pytest.mark.parametrize(
    ("body", "field"), INVALID_BODIES, ids=[f"{f}={b.get(f, '<missing>')!r}" for b, f in INVALID_BODIES]
)
def test_an_invalid_body_is_400_naming_the_field_and_writes_nothing(
    acme_api: Api, subscribe: Callable[..., Subscription], body: dict, field: str
) -> None:
    subscribe("https://hooks.example.com/in", ["#"], tenant=Tenant.objects.get(slug="acme"))

    response = acme_api.post(EVENTS, body)

    assert response.status_code == 400, response.content
    messages = response.json()[field]
    assert isinstance(messages, list) and messages and all(isinstance(m, str) and m for m in messages)
    assert not Event.objects.exists()
    assert not Delivery.objects.exists()


@pytest.mark.parametrize(
    "event_type",
    [
        ".".join(["w"] * 10),
        "a" * 128,
        "a." * 9 + "b" * 110,
        "order_item-2.created",
        "webhook",
        "webhooks.created",
        "x",
    ],
    ids=[
        "ten-words",
        "128-chars",
        "ten-words-128-chars",
        "underscore-dash-digit",
        "webhook-alone",
        "webhooks-prefix",
        "one-letter",
    ],
)
def test_a_type_at_the_edge_of_the_rules_is_accepted(acme_api: Api, event_type: str) -> None:
    response = acme_api.post(EVENTS, {"type": event_type, "data": {}})

    assert response.status_code == 202, response.content
    assert Event.objects.get(id=response.json()["id"]).type == event_type


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "order.created", "data": ',
        b"{'type': 'order.created', 'data': {}}",
        b'[{"type": "order.created", "data": {}}]',
        b"[]",
        b"null",
        b'"order.created"',
        b"42",
        b"\xff\xfe{}",
        b"",
    ],
    ids=["truncated", "single-quotes", "array", "empty-array", "null", "string", "number", "not-utf8", "empty"],
)
def test_a_body_that_is_not_a_json_object_is_400_with_a_json_error(acme_api: Api, raw: bytes) -> None:
    response = post_raw(acme_api, raw)

    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()
    assert not Event.objects.exists()


def test_a_body_that_is_not_json_at_all_is_415(acme_api: Api) -> None:
    response = post_raw(acme_api, "type=order.created", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415, response.content
    assert "detail" in response.json()
    assert not Event.objects.exists()


def test_unknown_fields_are_ignored_including_ones_that_look_like_output(acme_api: Api) -> None:
    """``id``, ``created_at``, ``deliveries`` and anything else unknown: silently dropped, never stored."""
    body = {
        **EVENT,
        "id": "evt_chosen_by_caller",
        "created_at": "2001-01-01T00:00:00Z",
        "deliveries": 99,
        "idempotency_key": "sneaky",
        "extra": {"nested": True},
    }

    response = acme_api.post(EVENTS, body)

    assert response.status_code == 202, response.content
    assert response.json()["id"] != "evt_chosen_by_caller"
    assert response.json()["deliveries"] == 0
    assert not response.json()["created_at"].startswith("2001")
    event = Event.objects.get()
    assert event.data == EVENT["data"]
    assert event.idempotency_key is None


def padded_body(size: int) -> bytes:
    """A valid event body of exactly ``size`` bytes."""
    empty = json.dumps({"type": "order.created", "data": {"pad": ""}}).encode()
    body = json.dumps({"type": "order.created", "data": {"pad": "x" * (size - len(empty))}}).encode()
    assert len(body) == size
    return body


def test_a_body_of_exactly_256_kib_is_accepted(acme_api: Api) -> None:
    response = post_raw(acme_api, padded_body(LIMIT))

    assert response.status_code == 202, response.content
    assert len(Event.objects.get().data["pad"]) > LIMIT - 100


@pytest.mark.parametrize("size", [LIMIT + 1, 2 * 1024 * 1024], ids=["one-byte-over", "over-django-upload-cap"])
def test_a_body_over_256_kib_is_413_json_and_writes_nothing(acme_api: Api, size: int) -> None:
    response = post_raw(acme_api, padded_body(size))

    assert response.status_code == 413, response.content
    assert response["Content-Type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)
    assert not Event.objects.exists()


def test_an_oversize_body_that_is_not_even_json_is_413_not_400(acme_api: Api) -> None:
    response = post_raw(acme_api, b"{" * (LIMIT + 1))

    assert response.status_code == 413, response.content
    assert not Event.objects.exists()


# --- Idempotency-Key ---


def test_a_repeat_with_the_same_key_and_body_replays_the_first_answer(
    acme_api: Api, subscribe: Callable[..., Subscription]
) -> None:
    subscribe("https://hooks.example.com/in", ["#"], tenant=Tenant.objects.get(slug="acme"))
    first = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")

    again = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")

    assert first.status_code == 202, first.content
    assert "Idempotent-Replayed" not in first
    assert again.status_code == 200, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.json()["deliveries"] == 1
    assert Event.objects.count() == 1
    assert Delivery.objects.count() == 1


def test_the_same_body_with_its_keys_in_another_order_is_a_replay(acme_api: Api) -> None:
    first = post_raw(acme_api, '{"type": "order.created", "data": {"a": 1, "b": 2}}', HTTP_IDEMPOTENCY_KEY="k")

    again = post_raw(acme_api, '{"data": {"b": 2, "a": 1}, "type": "order.created"}', HTTP_IDEMPOTENCY_KEY="k")

    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    "changed",
    [
        {**EVENT, "data": {"id": 43}},
        {**EVENT, "type": "order.updated"},
        {**EVENT, "tenant": "acme"},
    ],
    ids=["other-data", "other-type", "tenant-added"],
)
def test_the_same_key_with_a_different_body_is_422_and_creates_nothing(acme_api: Api, changed: dict) -> None:
    first = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")

    response = acme_api.post(EVENTS, changed, HTTP_IDEMPOTENCY_KEY="order-42")

    assert first.status_code == 202
    assert response.status_code == 422, response.content
    assert isinstance(response.json()["detail"], str)
    assert list(Event.objects.values_list("id", flat=True)) == [first.json()["id"]]


def test_another_client_with_the_same_key_gets_its_own_event(acme_api: Api, make_api: Callable[..., Api]) -> None:
    other = make_api(tenant="acme", name="acme second client")
    first = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")

    second = other.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")

    assert first.status_code == 202 and second.status_code == 202, second.content
    assert second.json()["id"] != first.json()["id"]
    assert "Idempotent-Replayed" not in second
    assert Event.objects.count() == 2


def test_requests_without_a_key_are_never_deduplicated(acme_api: Api) -> None:
    ids = {acme_api.post(EVENTS, EVENT).json()["id"] for _ in range(3)}

    assert len(ids) == 3
    assert Event.objects.count() == 3


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "", "tab\there", "bell\x07", "del\x7f", "clé", "ключ", "line\n", "\x00"],
    ids=["256-chars", "empty", "tab", "control", "del", "latin1", "cyrillic", "trailing-newline", "nul"],
)
def test_a_key_that_is_too_long_or_not_printable_ascii_is_400_and_writes_nothing(acme_api: Api, key: str) -> None:
    response = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY=key)

    assert response.status_code == 400, response.content
    assert "Idempotency-Key" in response.json()
    assert not Event.objects.exists()


@pytest.mark.parametrize("key", ["k" * 255, "a", "order 42 / retry #1 ~!", '"quoted"'])
def test_a_key_of_1_to_255_printable_ascii_characters_is_accepted(acme_api: Api, key: str) -> None:
    first = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY=key)
    again = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY=key)

    assert first.status_code == 202, first.content
    assert again.status_code == 200
    assert Event.objects.get().idempotency_key == key


def test_a_refused_request_does_not_use_up_its_key(acme_api: Api) -> None:
    refused = acme_api.post(EVENTS, {"type": "Bad", "data": {}}, HTTP_IDEMPOTENCY_KEY="order-42")

    accepted = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")

    assert refused.status_code == 400
    assert accepted.status_code == 202, accepted.content


def test_within_24_hours_the_key_still_replays(acme_api: Api) -> None:
    first = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")
    Event.objects.update(created_at=timezone.now() - timedelta(hours=23, minutes=59))

    again = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")

    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert Event.objects.count() == 1


@pytest.mark.parametrize("body", [EVENT, {**EVENT, "data": {"id": 43}}], ids=["same-body", "other-body"])
def test_after_24_hours_the_key_makes_a_new_event(acme_api: Api, body: dict) -> None:
    first = acme_api.post(EVENTS, EVENT, HTTP_IDEMPOTENCY_KEY="order-42")
    Event.objects.update(created_at=timezone.now() - timedelta(hours=24, seconds=1))

    again = acme_api.post(EVENTS, body, HTTP_IDEMPOTENCY_KEY="order-42")
    replay = acme_api.post(EVENTS, body, HTTP_IDEMPOTENCY_KEY="order-42")

    assert again.status_code == 202, again.content
    assert again.json()["id"] != first.json()["id"]
    assert Event.objects.count() == 2
    assert replay.status_code == 200, "the key now belongs to the new event"
    assert replay.json()["id"] == again.json()["id"]


@pytest.mark.services
def test_two_racing_requests_with_one_key_make_exactly_one_event(
    transactional_db: None, make_api: Callable[..., Api]
) -> None:
    """On PostgreSQL, where two requests really run at once: the unique key decides, the loser replays."""
    api = make_api(tenant="acme")
    for round_number in range(10):
        key = f"race-{round_number}"
        responses = race(2, api.token, {**EVENT, "data": {"round": round_number}}, key)

        assert sorted(r.status_code for r in responses) == [200, 202], [r.content for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert next(r for r in responses if r.status_code == 200)["Idempotent-Replayed"] == "true"
        assert Event.objects.filter(idempotency_key=key).count() == 1
    assert Event.objects.count() == 10


def race(threads: int, token: str, body: dict, key: str) -> list[Any]:
    barrier = threading.Barrier(threads)
    responses: list[Any] = []
    errors: list[BaseException] = []

    def fire() -> None:
        client = APIClient(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {token}")
        try:
            barrier.wait(timeout=10)
            responses.append(client.post(EVENTS, body, format="json", HTTP_IDEMPOTENCY_KEY=key))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=fire) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors, errors
    return responses


# --- GET /api/v1/event-types/ ---


@pytest.fixture
def published_everywhere(acme: Tenant, globex: Tenant, settings: Any) -> None:
    settings.WEBHOOK_EVENT_TYPES = {"invoice.paid": "An invoice was paid.", "order.created": "An order was placed."}
    publish("order.created", {}, tenant=acme)
    publish("order.shipped", {}, tenant=acme)
    publish("order.shipped", {}, tenant=acme)
    publish("globex.secret-project", {}, tenant=globex)
    publish("platform.sync", {})
    # What ping/ records: reserved types are never listed.
    Event.objects.create(type="webhook.ping", data={}, tenant=acme)
    Event.objects.create(type="webhook.ping", data={}, tenant=None)


DECLARED = ["invoice.paid", "order.created", "user.created", "user.deleted", "user.updated"]


def event_types(api: Api) -> list[dict]:
    response = api.get(EVENT_TYPES)
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_a_tenant_client_sees_declared_types_and_its_own_tenants_published_types(
    published_everywhere: None, acme_api: Api
) -> None:
    results = event_types(acme_api)

    assert [row["type"] for row in results] == sorted([*DECLARED, "order.shipped"])
    assert all(set(row) == {"type", "description"} for row in results)
    descriptions = {row["type"]: row["description"] for row in results}
    assert descriptions["order.created"] == "An order was placed."
    assert descriptions["invoice.paid"] == "An invoice was paid."
    assert descriptions["order.shipped"] == ""
    assert all(descriptions[t] for t in ("user.created", "user.updated", "user.deleted"))


def test_another_tenant_client_sees_its_types_and_not_acmes(published_everywhere: None, globex_api: Api) -> None:
    types = [row["type"] for row in event_types(globex_api)]

    assert types == sorted([*DECLARED, "globex.secret-project"])


def test_a_platform_client_sees_every_published_type_but_never_webhook_types(
    published_everywhere: None, platform_api: Api
) -> None:
    types = [row["type"] for row in event_types(platform_api)]

    assert types == sorted([*DECLARED, "globex.secret-project", "order.shipped", "platform.sync"])


def test_declared_types_follow_the_model_events_setting(db: None, settings: Any, platform_api: Api) -> None:
    settings.WEBHOOK_MODEL_EVENTS = {"auth.Group": {"created": "group.created", "deleted": "group.removed"}}

    types = [row["type"] for row in event_types(platform_api)]

    assert types == ["group.created", "group.removed"]


@pytest.mark.parametrize("scope", ["events.publish", "deliveries.read", "subscriptions.write"])
def test_any_valid_token_may_list_event_types(make_api: Callable[..., Api], scope: str) -> None:
    api = make_api(tenant="acme", scopes=[scope])

    assert api.get(EVENT_TYPES).status_code == 200


def test_listing_event_types_needs_a_valid_token(db: None) -> None:
    response = APIClient(HTTP_HOST="localhost").get(EVENT_TYPES)

    assert response.status_code == 401
    assert "detail" in response.json()


# --- X-Correlation-Id ---


@pytest.mark.parametrize("offered", ["abc", "A-Z.a_z:0-9", "x" * 128, "7", "req:2024-01-01.a_b-c"])
def test_a_valid_correlation_id_is_echoed_and_stored_on_the_event(acme_api: Api, offered: str) -> None:
    response = acme_api.post(EVENTS, EVENT, HTTP_X_CORRELATION_ID=offered)

    assert response.status_code == 202
    assert response["X-Correlation-Id"] == offered
    assert Event.objects.get(id=response.json()["id"]).correlation_id == offered


@pytest.mark.parametrize(
    "offered",
    ["", "x" * 129, "has space", "slash/no", "semi;colon", "é", "<script>", "a,b"],
    ids=["empty", "129-chars", "space", "slash", "semicolon", "non-ascii", "markup", "comma"],
)
def test_an_invalid_correlation_id_is_replaced_with_a_new_one_that_the_event_keeps(acme_api: Api, offered: str) -> None:
    response = acme_api.post(EVENTS, EVENT, HTTP_X_CORRELATION_ID=offered)

    assert response.status_code == 202
    given = response["X-Correlation-Id"]
    assert given != offered
    assert CORRELATION_ID.match(given)
    assert Event.objects.get(id=response.json()["id"]).correlation_id == given


def test_without_a_correlation_id_each_request_gets_its_own_and_the_event_keeps_it(acme_api: Api) -> None:
    first = acme_api.post(EVENTS, EVENT)
    second = acme_api.post(EVENTS, EVENT)

    assert CORRELATION_ID.match(first["X-Correlation-Id"])
    assert first["X-Correlation-Id"] != second["X-Correlation-Id"]
    assert Event.objects.get(id=first.json()["id"]).correlation_id == first["X-Correlation-Id"]


@pytest.mark.parametrize(
    ("method", "path", "authorized", "status"),
    [
        ("post", EVENTS, True, 202),
        ("post", EVENTS, False, 401),
        ("get", EVENT_TYPES, True, 200),
        ("get", "/api/v1/no-such-thing/", True, 404),
        ("delete", EVENTS, True, 405),
        ("post", "/oauth/token/", False, 400),
        ("get", "/admin/login/", False, 200),
        ("get", "/no-such-page", False, 404),
    ],
)
def test_every_response_carries_the_correlation_id(
    acme_api: Api, method: str, path: str, authorized: bool, status: int
) -> None:
    client = acme_api.http if authorized else APIClient(HTTP_HOST="localhost")

    body = {} if method == "get" else {"data": EVENT, "format": "json"}
    response = getattr(client, method)(path, **body, HTTP_X_CORRELATION_ID="trace-1")
    fresh = getattr(client, method)(path, **body)

    assert response.status_code == status, response.content
    assert response["X-Correlation-Id"] == "trace-1"
    assert CORRELATION_ID.match(fresh["X-Correlation-Id"])


# --- Errors are JSON ---


@pytest.mark.parametrize("authorized", [True, False], ids=["with-token", "without-token"])
@pytest.mark.parametrize(
    "path", ["/api/v1/no-such-thing/", "/api/v1/events/extra/", "/api/v2/events/", "/api/v1/subscriptions/sub_nope/"]
)
def test_an_unknown_api_path_is_a_json_404(acme_api: Api, path: str, authorized: bool) -> None:
    client = acme_api.http if authorized else APIClient(HTTP_HOST="localhost")

    response = client.get(path)

    expected = 401 if path.endswith("sub_nope/") and not authorized else 404
    assert response.status_code == expected, response.content
    assert response["Content-Type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", EVENTS),
        ("delete", EVENTS),
        ("put", EVENTS),
        ("post", EVENT_TYPES),
        ("delete", "/api/v1/subscriptions/"),
        ("put", "/api/v1/deliveries/"),
    ],
)
def test_a_wrong_method_is_a_json_405(acme_api: Api, method: str, path: str) -> None:
    response = getattr(acme_api.http, method)(path, **({} if method == "get" else {"data": {}, "format": "json"}))

    assert response.status_code == 405, response.content
    assert response["Content-Type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)
    assert not Event.objects.exists()


def test_an_events_created_at_is_given_in_utc_whatever_time_zone_is_active(db: None) -> None:
    from webhooks.serializers import EventSerializer

    event = publish("order.created", {"n": 1})

    with timezone.override("Asia/Tokyo"):
        shown = EventSerializer(event).data["created_at"]

    assert shown.endswith("Z")
    assert datetime.fromisoformat(shown) == event.created_at
