"""The subscriptions API (CONTRACT.md sections 2 and 3): real OAuth2 tokens, a real receiver, the real worker."""

import base64
import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from django.http import HttpResponse
from django.utils import timezone

from deliveries.models import Attempt, Delivery, Status
from deliveries.worker import deliver_batch
from subscriptions.models import Subscription, Tenant
from tests.conftest import Api
from tests.receiver import Receiver, Reply
from tests.standard_webhooks import expected_signature, signature_is_valid
from webhooks import publish
from webhooks.models import Event

pytestmark = pytest.mark.django_db

SUBSCRIPTIONS = "/api/v1/subscriptions/"
DELIVERIES = "/api/v1/deliveries/"
PUBLIC_URL = "https://hooks.example.com/orders"
PUBLIC_ADDRESS = "93.184.215.14"
SUBSCRIPTION_FIELDS = {
    "id",
    "url",
    "events",
    "description",
    "is_active",
    "disabled_reason",
    "tenant",
    "created_at",
    "updated_at",
}


@pytest.fixture(autouse=True)
def public_dns(no_outside_dns: dict[str, list[str]]) -> dict[str, list[str]]:
    """hooks.example.com resolves to a public address, as a real subscriber's host would."""
    no_outside_dns["hooks.example.com"] = [PUBLIC_ADDRESS]
    return no_outside_dns


@pytest.fixture(autouse=True)
def fast_client_secret_hashing(settings) -> None:
    """OAuth2 client secrets are stored hashed; the production hasher costs about a second per client."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Helpers ---


def create(api: Api, **fields: object) -> dict:
    body = {"url": PUBLIC_URL, "events": ["order.*"], **fields}
    response = api.post(SUBSCRIPTIONS, body)
    assert response.status_code == 201, response.content
    return response.json()


def detail(subscription_id: str, suffix: str = "") -> str:
    return f"{SUBSCRIPTIONS}{subscription_id}/{suffix}"


def key_of(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def secret_of(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def pending_delivery(subscription: Subscription, event_type: str = "order.created", **fields: object) -> Delivery:
    """A delivery waiting for its next attempt, as publish() leaves it."""
    event = Event.objects.create(type=event_type, data={"n": 1}, tenant=subscription.tenant)
    defaults: dict[str, object] = {"next_attempt_at": timezone.now() + timedelta(minutes=5)}
    return Delivery.objects.create(
        event=event, subscription=subscription, event_type=event_type, **{**defaults, **fields}
    )


def failed_delivery(subscription: Subscription, created_at: datetime) -> Delivery:
    """A delivery that ran out of retries: attempt_count and failures spent, completed."""
    event = Event.objects.create(type="order.created", data={"n": 1}, tenant=subscription.tenant, created_at=created_at)
    return Delivery.objects.create(
        event=event,
        subscription=subscription,
        event_type=event.type,
        status=Status.FAILED,
        attempt_count=6,
        failures=6,
        next_attempt_at=None,
        created_at=created_at,
        completed_at=created_at + timedelta(hours=7),
        last_error="HTTP 500",
    )


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def closed_port() -> int:
    """A local port nobody listens on: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_rejected(response: HttpResponse, field: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert isinstance(body[field], list) and body[field] and all(isinstance(m, str) for m in body[field])


# --- Create ---


def test_creating_a_subscription_answers_201_with_its_location_and_a_generated_secret(acme_api: Api) -> None:
    response = acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["order.*", "invoice.paid"]})

    assert response.status_code == 201, response.content
    body = response.json()
    assert isinstance(body["id"], str) and body["id"]
    assert response["Location"].endswith(detail(body["id"]))
    assert body["url"] == PUBLIC_URL
    assert body["events"] == ["order.*", "invoice.paid"]
    assert body["description"] == ""
    assert body["is_active"] is True
    assert body["disabled_reason"] is None
    assert body["tenant"] == "acme"
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")
    assert set(body) == SUBSCRIPTION_FIELDS | {"secret"}
    assert len(key_of(body["secret"])) == 32
    stored = Subscription.objects.get(pk=body["id"])
    assert stored.secret == body["secret"] and stored.tenant.slug == "acme"


def test_the_location_header_points_at_the_new_subscription(acme_api: Api) -> None:
    response = acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["#"]})

    location = response["Location"]
    path = location[location.index("/api/") :]
    assert acme_api.get(path).json()["id"] == response.json()["id"]


def test_each_subscription_gets_its_own_random_secret(acme_api: Api) -> None:
    first, second = create(acme_api)["secret"], create(acme_api)["secret"]

    assert first != second


def test_a_secret_given_at_creation_is_kept(acme_api: Api) -> None:
    chosen = secret_of(bytes(range(40)))

    body = create(acme_api, secret=chosen, description="orders to the ERP")

    assert body["secret"] == chosen
    assert body["description"] == "orders to the ERP"
    assert Subscription.objects.get(pk=body["id"]).secret == chosen


def test_a_platform_client_creates_subscriptions_with_no_tenant_or_for_a_named_one(
    platform_api: Api, acme_api: Api
) -> None:
    assert create(platform_api)["tenant"] is None
    assert create(platform_api, tenant="acme")["tenant"] == "acme"


def test_a_tenant_client_may_name_its_own_tenant_but_not_another(acme_api: Api, globex_api: Api) -> None:
    assert create(acme_api, tenant="acme")["tenant"] == "acme"

    response = acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["#"], "tenant": "globex"})

    assert response.status_code == 403
    assert Subscription.objects.filter(tenant__slug="globex").count() == 0


def test_an_unknown_tenant_slug_is_400(platform_api: Api) -> None:
    response = platform_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["#"], "tenant": "nobody"})

    assert_rejected(response, "tenant")
    assert Subscription.objects.count() == 0


@pytest.mark.parametrize("tenant_json", ['"\\u0000"', '"\\ud800"', "5", '["acme"]', '{"slug": "acme"}'])
def test_a_tenant_that_is_not_a_clean_string_is_400(platform_api: Api, acme_api: Api, tenant_json: str) -> None:
    raw = f'{{"url": "{PUBLIC_URL}", "events": ["#"], "tenant": {tenant_json}}}'.encode()

    response = platform_api.http.generic("POST", SUBSCRIPTIONS, raw, content_type="application/json")

    assert_rejected(response, "tenant")
    assert Subscription.objects.count() == 0


def test_creating_needs_the_write_scope(make_api: Callable[..., Api]) -> None:
    reader = make_api(tenant="acme", scopes=["subscriptions.read"])

    response = reader.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["#"]})

    assert response.status_code == 403
    assert Subscription.objects.count() == 0


def test_a_call_without_a_token_is_401(db: None) -> None:
    from rest_framework.test import APIClient

    response = APIClient(HTTP_HOST="localhost").get(SUBSCRIPTIONS)

    assert response.status_code == 401
    assert "detail" in response.json()


# --- List ---


def test_the_list_is_paginated_twenty_to_a_page(acme_api: Api) -> None:
    acme = Tenant.objects.get(slug="acme")
    Subscription.objects.bulk_create(
        Subscription(url=f"{PUBLIC_URL}/{i}", events=["#"], tenant=acme) for i in range(25)
    )

    first = acme_api.get(SUBSCRIPTIONS).json()
    second = acme_api.get(first["next"]).json()

    assert set(first) == {"count", "next", "previous", "results"}
    assert first["count"] == 25 and len(first["results"]) == 20
    assert first["previous"] is None and "page=2" in first["next"]
    assert second["count"] == 25 and len(second["results"]) == 5
    assert second["next"] is None and second["previous"] is not None
    ids = [s["id"] for s in first["results"] + second["results"]]
    assert len(set(ids)) == 25
    assert all(set(s) == SUBSCRIPTION_FIELDS for s in first["results"])


def test_page_size_is_honoured_and_capped_at_one_hundred(acme_api: Api) -> None:
    acme = Tenant.objects.get(slug="acme")
    Subscription.objects.bulk_create(
        Subscription(url=f"{PUBLIC_URL}/{i}", events=["#"], tenant=acme) for i in range(105)
    )

    assert len(acme_api.get(SUBSCRIPTIONS, data={"page_size": 7}).json()["results"]) == 7
    assert len(acme_api.get(SUBSCRIPTIONS, data={"page_size": 100}).json()["results"]) == 100
    capped = acme_api.get(SUBSCRIPTIONS, data={"page_size": 1000}).json()
    assert len(capped["results"]) == 100 and capped["count"] == 105


@pytest.mark.parametrize("page_size", ["0", "-1", "abc", "1.5", "", "²", "+5", " 5"])
def test_a_page_size_that_is_not_a_positive_integer_is_400(acme_api: Api, page_size: str) -> None:
    create(acme_api)

    response = acme_api.get(SUBSCRIPTIONS, data={"page_size": page_size})

    assert_rejected(response, "page_size")


@pytest.mark.parametrize("page", ["0", "-1", "abc", "²"])
def test_a_page_that_is_not_a_positive_integer_is_400(acme_api: Api, page: str) -> None:
    create(acme_api)

    response = acme_api.get(SUBSCRIPTIONS, data={"page": page})

    assert_rejected(response, "page")


def test_a_page_past_the_end_is_404(acme_api: Api) -> None:
    create(acme_api)

    response = acme_api.get(SUBSCRIPTIONS, data={"page": 2})

    assert response.status_code == 404
    assert "detail" in response.json()


def test_an_empty_list_still_has_its_first_page(acme_api: Api) -> None:
    body = acme_api.get(SUBSCRIPTIONS).json()

    assert body == {"count": 0, "next": None, "previous": None, "results": []}


def test_the_list_filters_on_is_active(acme_api: Api) -> None:
    active = create(acme_api)["id"]
    inactive = create(acme_api, is_active=False)["id"]

    assert [s["id"] for s in acme_api.get(SUBSCRIPTIONS, data={"is_active": "true"}).json()["results"]] == [active]
    assert [s["id"] for s in acme_api.get(SUBSCRIPTIONS, data={"is_active": "false"}).json()["results"]] == [inactive]
    assert acme_api.get(SUBSCRIPTIONS).json()["count"] == 2


def test_the_event_filter_lists_the_subscriptions_whose_patterns_would_receive_it(acme_api: Api) -> None:
    receiving = {
        create(acme_api, events=[pattern])["id"]
        for pattern in ["order.created", "order.*", "*.created", "#", "order.#", "#.created"]
    }
    receiving.add(create(acme_api, events=["invoice.paid", "order.created"])["id"])
    for pattern in ["order.updated", "order", "order.created.v2", "order.*.*", "invoice.#", "*"]:
        create(acme_api, events=[pattern])

    body = acme_api.get(SUBSCRIPTIONS, data={"event": "order.created", "page_size": 100}).json()

    assert {s["id"] for s in body["results"]} == receiving
    assert body["count"] == len(receiving)


def test_the_event_filter_combines_with_is_active(acme_api: Api) -> None:
    active = create(acme_api, events=["order.*"])["id"]
    create(acme_api, events=["order.*"], is_active=False)
    create(acme_api, events=["invoice.*"])

    body = acme_api.get(SUBSCRIPTIONS, data={"event": "order.created", "is_active": "true"}).json()

    assert [s["id"] for s in body["results"]] == [active]


def test_a_tenant_lists_only_its_own_subscriptions_while_the_platform_sees_all(
    acme_api: Api, globex_api: Api, platform_api: Api
) -> None:
    ours = create(acme_api)["id"]
    theirs = create(globex_api)["id"]

    assert [s["id"] for s in acme_api.get(SUBSCRIPTIONS).json()["results"]] == [ours]
    assert [s["id"] for s in globex_api.get(SUBSCRIPTIONS).json()["results"]] == [theirs]
    assert {s["id"] for s in platform_api.get(SUBSCRIPTIONS).json()["results"]} == {ours, theirs}


# --- Retrieve, update ---


def test_retrieving_answers_the_subscription_without_its_secret(acme_api: Api) -> None:
    created = create(acme_api, description="ERP")

    response = acme_api.get(detail(created["id"]))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == SUBSCRIPTION_FIELDS
    assert {k: body[k] for k in body} == {k: created[k] for k in SUBSCRIPTION_FIELDS}


def test_another_tenants_subscription_is_404_everywhere(acme_api: Api, globex_api: Api, receiver: Receiver) -> None:
    theirs = create(globex_api)["id"]
    since = {"since": iso(timezone.now())}

    assert acme_api.get(detail(theirs)).status_code == 404
    assert acme_api.patch(detail(theirs), {"description": "mine"}).status_code == 404
    assert acme_api.put(detail(theirs), {"url": PUBLIC_URL, "events": ["#"]}).status_code == 404
    assert acme_api.get(detail(theirs, "secret/")).status_code == 404
    assert acme_api.post(detail(theirs, "rotate-secret/")).status_code == 404
    assert acme_api.post(detail(theirs, "ping/")).status_code == 404
    assert acme_api.post(detail(theirs, "recover/"), since).status_code == 404
    assert acme_api.delete(detail(theirs)).status_code == 404
    assert Subscription.objects.get(pk=theirs).description == ""
    assert Subscription.objects.get(pk=theirs).deleted_at is None
    assert receiver.requests == []


def test_an_unknown_id_is_404_with_a_json_body(acme_api: Api) -> None:
    response = acme_api.get(detail("sub_doesnotexist"))

    assert response.status_code == 404
    assert "detail" in response.json()


def test_patch_changes_only_the_fields_it_names(acme_api: Api) -> None:
    created = create(acme_api, description="before")

    response = acme_api.patch(detail(created["id"]), {"events": ["invoice.#"], "description": "after"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["events"] == ["invoice.#"] and body["description"] == "after"
    assert body["url"] == PUBLIC_URL
    assert "secret" not in body
    stored = Subscription.objects.get(pk=created["id"])
    assert stored.events == ["invoice.#"] and stored.description == "after" and stored.secret == created["secret"]


def test_put_replaces_the_subscription(acme_api: Api) -> None:
    created = create(acme_api, description="before")
    new_url = "https://hooks.example.com/v2"

    response = acme_api.put(detail(created["id"]), {"url": new_url, "events": ["#"], "description": "after"})

    assert response.status_code == 200, response.content
    stored = Subscription.objects.get(pk=created["id"])
    assert (stored.url, stored.events, stored.description) == (new_url, ["#"], "after")
    assert response.json()["tenant"] == "acme"


def test_put_without_the_required_fields_is_400(acme_api: Api) -> None:
    created = create(acme_api)

    response = acme_api.put(detail(created["id"]), {"description": "only this"})

    assert_rejected(response, "url")
    assert "events" in response.json()
    assert Subscription.objects.get(pk=created["id"]).description == ""


@pytest.mark.parametrize("method", ["patch", "put"])
def test_changing_the_secret_by_update_is_400_and_changes_nothing(acme_api: Api, method: str) -> None:
    created = create(acme_api)
    body = {"url": PUBLIC_URL, "events": ["#"], "description": "x", "secret": secret_of(b"k" * 32)}

    response = getattr(acme_api, method)(detail(created["id"]), body)

    assert_rejected(response, "secret")
    stored = Subscription.objects.get(pk=created["id"])
    assert stored.secret == created["secret"] and stored.description == "" and stored.events == ["order.*"]


def test_an_invalid_update_stores_nothing(acme_api: Api) -> None:
    created = create(acme_api)

    response = acme_api.patch(detail(created["id"]), {"url": "http://127.0.0.1/admin", "description": "x"})

    assert_rejected(response, "url")
    stored = Subscription.objects.get(pk=created["id"])
    assert stored.url == PUBLIC_URL and stored.description == ""


def test_the_tenant_cannot_be_changed_by_update(platform_api: Api, acme_api: Api, globex_api: Api) -> None:
    created = create(platform_api, tenant="acme")

    response = platform_api.patch(detail(created["id"]), {"tenant": "globex"})

    assert response.status_code in (200, 400)
    assert Subscription.objects.get(pk=created["id"]).tenant.slug == "acme"


def test_setting_is_active_false_fails_pending_deliveries_with_subscription_disabled(acme_api: Api) -> None:
    created = create(acme_api)
    subscription = Subscription.objects.get(pk=created["id"])
    waiting = pending_delivery(subscription, attempt_count=1, failures=1)
    done = pending_delivery(subscription, status=Status.SUCCEEDED, next_attempt_at=None)

    response = acme_api.patch(detail(created["id"]), {"is_active": False})

    assert response.status_code == 200, response.content
    assert response.json()["is_active"] is False
    waiting.refresh_from_db()
    assert waiting.status == Status.FAILED and waiting.next_attempt_at is None
    last = Attempt.objects.filter(delivery=waiting).order_by("-number").first()
    assert last is not None and last.number == 2 and last.error == "subscription disabled" and not last.success
    shown = acme_api.get(f"{DELIVERIES}{waiting.id}/").json()
    assert shown["status"] == "failed" and shown["attempts"][-1]["error"] == "subscription disabled"
    done.refresh_from_db()
    assert done.status == Status.SUCCEEDED


def test_an_inactive_subscription_gets_no_new_deliveries(acme_api: Api) -> None:
    created = create(acme_api, events=["order.*"])
    acme_api.patch(detail(created["id"]), {"is_active": False})

    event = publish("order.created", {"n": 1}, tenant="acme")

    assert not Delivery.objects.filter(event=event).exists()


def test_setting_is_active_true_re_enables_and_clears_the_reason_and_the_failure_count(acme_api: Api) -> None:
    created = create(acme_api, events=["order.*"])
    Subscription.objects.filter(pk=created["id"]).update(
        is_active=False, disabled_reason="5 consecutive failed deliveries", consecutive_failures=5
    )
    assert acme_api.get(detail(created["id"])).json()["disabled_reason"] == "5 consecutive failed deliveries"

    response = acme_api.patch(detail(created["id"]), {"is_active": True})

    assert response.status_code == 200, response.content
    assert response.json()["is_active"] is True and response.json()["disabled_reason"] is None
    stored = Subscription.objects.get(pk=created["id"])
    assert stored.is_active and stored.disabled_reason is None and stored.consecutive_failures == 0
    assert Delivery.objects.filter(event=publish("order.created", {}, tenant="acme")).count() == 1


# --- Delete ---


def test_delete_answers_204_and_then_the_subscription_is_gone(acme_api: Api) -> None:
    created = create(acme_api)

    response = acme_api.delete(detail(created["id"]))

    assert response.status_code == 204
    assert acme_api.get(detail(created["id"])).status_code == 404
    assert acme_api.delete(detail(created["id"])).status_code == 404
    assert acme_api.patch(detail(created["id"]), {"description": "x"}).status_code == 404
    assert acme_api.get(SUBSCRIPTIONS).json()["count"] == 0


def test_delete_cancels_pending_deliveries_and_keeps_the_history_listable(acme_api: Api) -> None:
    created = create(acme_api)
    subscription = Subscription.objects.get(pk=created["id"])
    waiting = pending_delivery(subscription)
    done = pending_delivery(subscription, status=Status.SUCCEEDED, next_attempt_at=None, attempt_count=1)

    acme_api.delete(detail(created["id"]))

    history = acme_api.get(DELIVERIES, data={"subscription": created["id"]}).json()
    statuses = {d["id"]: d["status"] for d in history["results"]}
    assert statuses == {waiting.id: "cancelled", done.id: "succeeded"}
    assert all(d["next_attempt_at"] is None for d in history["results"])
    assert acme_api.get(f"{DELIVERIES}{waiting.id}/").json()["status"] == "cancelled"
    assert not Delivery.objects.filter(event=publish("order.created", {}, tenant="acme")).exists()


# --- Secret and rotation ---


def test_the_secret_endpoint_answers_the_current_secret(acme_api: Api) -> None:
    created = create(acme_api)

    response = acme_api.get(detail(created["id"], "secret/"))

    assert response.status_code == 200
    assert response.json() == {"secret": created["secret"]}


def test_reading_the_secret_needs_the_read_scope(acme_api: Api, make_api: Callable[..., Api]) -> None:
    created = create(acme_api)
    writer = make_api(tenant="acme", scopes=["subscriptions.write"])

    assert writer.get(detail(created["id"], "secret/")).status_code == 403


def test_rotating_answers_a_new_secret_and_keeps_the_old_one_for_a_day(acme_api: Api) -> None:
    created = create(acme_api)

    response = acme_api.post(detail(created["id"], "rotate-secret/"))

    assert response.status_code == 200, response.content
    new = response.json()["secret"]
    assert set(response.json()) == {"secret"}
    assert new != created["secret"] and len(key_of(new)) == 32
    assert acme_api.get(detail(created["id"], "secret/")).json() == {"secret": new}
    stored = Subscription.objects.get(pk=created["id"])
    assert stored.previous_secret == created["secret"]
    overlap = stored.previous_secret_expires_at - timezone.now()
    assert timedelta(hours=23, minutes=59) < overlap <= timedelta(hours=24)


def test_rotating_to_a_chosen_secret(acme_api: Api) -> None:
    created = create(acme_api)
    chosen = secret_of(bytes(range(24)))

    response = acme_api.post(detail(created["id"], "rotate-secret/"), {"secret": chosen})

    assert response.status_code == 200
    assert response.json() == {"secret": chosen}
    assert Subscription.objects.get(pk=created["id"]).secret == chosen


@pytest.mark.parametrize("bad", ["not-a-secret", secret_of(b"k" * 23), 42, None])
def test_rotating_to_an_invalid_secret_is_400_and_keeps_the_current_one(acme_api: Api, bad: object) -> None:
    created = create(acme_api)

    response = acme_api.post(detail(created["id"], "rotate-secret/"), {"secret": bad})

    assert_rejected(response, "secret")
    stored = Subscription.objects.get(pk=created["id"])
    assert stored.secret == created["secret"] and stored.previous_secret == ""


def test_during_a_rotation_a_delivery_carries_two_signatures_each_valid_with_its_secret(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    created = create(acme_api, url=receiver.url(), events=["order.*"])
    old = created["secret"]
    new = acme_api.post(detail(created["id"], "rotate-secret/")).json()["secret"]
    publish("order.created", {"n": 1}, tenant="acme")

    deliver_batch()

    (request,) = receiver.wait_for(1)
    headers = {name.lower(): value for name, value in request.headers.items()}
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    timestamp = headers["webhook-timestamp"]
    assert set(signatures) == {
        expected_signature(new, headers["webhook-id"], timestamp, request.body),
        expected_signature(old, headers["webhook-id"], timestamp, request.body),
    }
    assert signature_is_valid(new, request.headers, request.body)
    assert signature_is_valid(old, request.headers, request.body)


def test_once_the_old_secret_expires_a_delivery_carries_one_signature(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    created = create(acme_api, url=receiver.url(), events=["order.*"])
    old = created["secret"]
    new = acme_api.post(detail(created["id"], "rotate-secret/")).json()["secret"]
    Subscription.objects.filter(pk=created["id"]).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    publish("order.created", {"n": 1}, tenant="acme")

    deliver_batch()

    (request,) = receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert signature_is_valid(new, request.headers, request.body)
    assert not signature_is_valid(old, request.headers, request.body)


# --- Ping ---


def test_ping_sends_a_signed_webhook_ping_and_answers_its_outcome(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    created = create(acme_api, url=receiver.url())

    response = acme_api.post(detail(created["id"], "ping/"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"success", "status_code", "duration_ms", "error", "response_body"}
    assert body["success"] is True and body["status_code"] == 200 and body["error"] is None
    assert isinstance(body["duration_ms"], int) and body["duration_ms"] >= 0
    assert body["response_body"] == "ok"
    (request,) = receiver.wait_for(1)
    assert request.headers["X-Webhook-Event"] == "webhook.ping"
    assert json.loads(request.body)["type"] == "webhook.ping"
    assert signature_is_valid(created["secret"], request.headers, request.body)


def test_a_ping_is_recorded_as_a_webhook_ping_delivery_with_one_attempt(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    created = create(acme_api, url=receiver.url())
    acme_api.post(detail(created["id"], "ping/"))

    listed = acme_api.get(DELIVERIES, data={"subscription": created["id"]}).json()

    assert listed["count"] == 1
    (delivery,) = listed["results"]
    assert delivery["event_type"] == "webhook.ping" and delivery["status"] == "succeeded"
    assert delivery["attempt_count"] == 1 and delivery["next_attempt_at"] is None
    shown = acme_api.get(f"{DELIVERIES}{delivery['id']}/").json()
    assert [(a["number"], a["status_code"], a["success"]) for a in shown["attempts"]] == [(1, 200, True)]
    assert receiver.requests[0].headers["webhook-id"] == delivery["event"]


def test_a_failed_ping_is_never_retried(acme_api: Api, receiver: Receiver, allow_loopback: None) -> None:
    receiver.reply = lambda request: Reply(500, b"boom")
    created = create(acme_api, url=receiver.url())

    body = acme_api.post(detail(created["id"], "ping/")).json()
    deliver_batch()

    assert body["success"] is False and body["status_code"] == 500 and body["error"] == "HTTP 500"
    assert body["response_body"] == "boom"
    delivery = Delivery.objects.get(subscription_id=created["id"])
    assert delivery.status == Status.FAILED and delivery.next_attempt_at is None
    assert delivery.attempts.count() == 1
    assert len(receiver.requests) == 1


def test_a_ping_never_changes_the_subscription_even_on_410(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    receiver.reply = lambda request: Reply(410, b"gone")
    created = create(acme_api, url=receiver.url())

    body = acme_api.post(detail(created["id"], "ping/")).json()

    assert body["success"] is False and body["status_code"] == 410
    stored = Subscription.objects.get(pk=created["id"])
    assert stored.is_active and stored.disabled_reason is None and stored.consecutive_failures == 0


def test_ping_works_on_an_inactive_subscription_and_leaves_it_inactive(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    created = create(acme_api, url=receiver.url())
    Subscription.objects.filter(pk=created["id"]).update(
        is_active=False, disabled_reason="endpoint answered 410 Gone", consecutive_failures=3
    )

    body = acme_api.post(detail(created["id"], "ping/")).json()

    assert body["success"] is True
    assert len(receiver.requests) == 1
    stored = Subscription.objects.get(pk=created["id"])
    assert not stored.is_active
    assert stored.disabled_reason == "endpoint answered 410 Gone" and stored.consecutive_failures == 3


def test_ping_keeps_only_the_first_4_kib_of_the_response(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    receiver.reply = lambda request: Reply(200, b"x" * 10_000)
    created = create(acme_api, url=receiver.url())

    body = acme_api.post(detail(created["id"], "ping/")).json()

    assert body["success"] is True and body["response_body"] == "x" * 4096


def test_a_ping_to_a_closed_port_answers_connection_refused_in_time(
    acme_api: Api, allow_loopback: None, settings
) -> None:
    settings.WEBHOOK_TIMEOUT = 1
    created = create(acme_api, url=f"http://127.0.0.1:{closed_port()}/hook")

    started = time.monotonic()
    response = acme_api.post(detail(created["id"], "ping/"))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False and body["status_code"] is None and body["error"] == "connection refused"
    assert elapsed < settings.WEBHOOK_TIMEOUT + 1
    assert Delivery.objects.get(subscription_id=created["id"]).status == Status.FAILED


def test_a_ping_to_a_slow_endpoint_answers_timeout_in_time(
    acme_api: Api, receiver: Receiver, allow_loopback: None, settings
) -> None:
    settings.WEBHOOK_TIMEOUT = 1
    receiver.reply = lambda request: Reply(200, b"late", delay=3)
    created = create(acme_api, url=receiver.url())

    started = time.monotonic()
    response = acme_api.post(detail(created["id"], "ping/"))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False and body["status_code"] is None and body["error"] == "timeout"
    assert elapsed < settings.WEBHOOK_TIMEOUT + 1


def test_a_ping_to_a_private_address_is_blocked_when_private_networks_are_not_allowed(
    acme_api: Api, receiver: Receiver, no_outside_dns: dict[str, list[str]]
) -> None:
    # Registered while the name did not resolve; it now points at loopback (DNS rebinding).
    created = create(acme_api, url=f"http://rebind.example.net:{receiver.port}/hook")
    no_outside_dns["rebind.example.net"] = ["127.0.0.1"]

    body = acme_api.post(detail(created["id"], "ping/")).json()

    assert body["success"] is False and body["error"] == "blocked: private address"
    assert receiver.requests == []


@pytest.mark.parametrize("address", ["64:ff9b::7f00:1", "2002:a9fe:a9fe::", "::ffff:0:7f00:1"])
def test_a_ping_to_a_name_resolving_to_an_ipv6_address_carrying_a_private_ipv4_is_blocked_and_recorded(
    acme_api: Api, no_outside_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    created = create(acme_api, url="https://rebind.example.net/hook")
    no_outside_dns["rebind.example.net"] = [address]

    def create_connection(target: tuple, *args: object, **kwargs: object) -> socket.socket:
        pytest.fail(f"the guard let a connection to {target} through")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    body = acme_api.post(detail(created["id"], "ping/")).json()

    assert body["error"] == "blocked: private address"
    (attempt,) = Attempt.objects.filter(delivery__subscription_id=created["id"])
    assert (attempt.error, attempt.status_code) == ("blocked: private address", None)


def test_ping_needs_the_write_scope(acme_api: Api, make_api: Callable[..., Api], receiver: Receiver) -> None:
    created = create(acme_api)
    reader = make_api(tenant="acme", scopes=["subscriptions.read"])

    assert reader.post(detail(created["id"], "ping/")).status_code == 403
    assert not Delivery.objects.exists()


# --- Recover ---


def test_recover_requeues_only_the_failed_deliveries_created_since_then(acme_api: Api) -> None:
    created = create(acme_api)
    subscription = Subscription.objects.get(pk=created["id"])
    now = timezone.now()
    old = failed_delivery(subscription, now - timedelta(days=3))
    recent = [failed_delivery(subscription, now - timedelta(hours=h)) for h in (1, 5)]
    succeeded = pending_delivery(subscription, status=Status.SUCCEEDED, next_attempt_at=None)
    waiting = pending_delivery(subscription)
    waiting_due = waiting.next_attempt_at

    response = acme_api.post(detail(created["id"], "recover/"), {"since": iso(now - timedelta(days=1))})

    assert response.status_code == 202, response.content
    assert response.json() == {"requeued": 2}
    for delivery in recent:
        delivery.refresh_from_db()
        assert delivery.status == Status.PENDING
        assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= timezone.now()
        assert delivery.failures == 0 and delivery.completed_at is None
    old.refresh_from_db()
    assert old.status == Status.FAILED
    succeeded.refresh_from_db()
    assert succeeded.status == Status.SUCCEEDED
    waiting.refresh_from_db()
    assert waiting.status == Status.PENDING and waiting.next_attempt_at == waiting_due


def test_recover_leaves_other_subscriptions_alone(acme_api: Api) -> None:
    ours = Subscription.objects.get(pk=create(acme_api)["id"])
    other = Subscription.objects.get(pk=create(acme_api)["id"])
    since = timezone.now() - timedelta(days=1)
    failed_delivery(ours, since + timedelta(hours=1))
    theirs = failed_delivery(other, since + timedelta(hours=1))

    response = acme_api.post(detail(ours.id, "recover/"), {"since": iso(since)})

    assert response.json() == {"requeued": 1}
    theirs.refresh_from_db()
    assert theirs.status == Status.FAILED


def test_recovered_deliveries_go_to_the_current_url_with_a_fresh_retry_schedule(
    acme_api: Api, receiver: Receiver, allow_loopback: None
) -> None:
    receiver.reply = lambda request: Reply(500)
    created = create(acme_api)
    subscription = Subscription.objects.get(pk=created["id"])
    delivery = failed_delivery(subscription, timezone.now() - timedelta(hours=2))
    acme_api.patch(detail(created["id"]), {"url": receiver.url("/moved")})
    acme_api.post(detail(created["id"], "recover/"), {"since": iso(timezone.now() - timedelta(days=1))})

    deliver_batch()

    (request,) = receiver.wait_for(1)
    assert request.path == "/moved"
    assert request.headers["webhook-id"] == delivery.event_id
    assert request.headers["X-Webhook-Attempt"] == "7"
    delivery.refresh_from_db()
    # The spent schedule would have failed it for good; a fresh one waits WEBHOOK_RETRY_SCHEDULE[0].
    assert delivery.status == Status.PENDING and delivery.attempt_count == 7
    wait = delivery.next_attempt_at - timezone.now()
    assert timedelta(seconds=50) < wait <= timedelta(seconds=60)


def test_recover_on_an_inactive_subscription_is_409_and_requeues_nothing(acme_api: Api) -> None:
    created = create(acme_api, is_active=False)
    delivery = failed_delivery(Subscription.objects.get(pk=created["id"]), timezone.now() - timedelta(hours=1))

    response = acme_api.post(detail(created["id"], "recover/"), {"since": iso(timezone.now() - timedelta(days=1))})

    assert response.status_code == 409
    assert "detail" in response.json()
    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED


@pytest.mark.parametrize("body", [{"since": "yesterday"}, {"since": "2024-13-45T00:00:00Z"}, {"since": 5}, {}])
def test_recover_with_a_bad_date_is_400(acme_api: Api, body: dict) -> None:
    created = create(acme_api)
    delivery = failed_delivery(Subscription.objects.get(pk=created["id"]), timezone.now() - timedelta(hours=1))

    response = acme_api.post(detail(created["id"], "recover/"), body)

    assert_rejected(response, "since")
    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED


def test_recover_needs_the_deliveries_write_scope(acme_api: Api, make_api: Callable[..., Api]) -> None:
    created = create(acme_api)
    subscriptions_only = make_api(tenant="acme", scopes=["subscriptions.read", "subscriptions.write"])

    response = subscriptions_only.post(detail(created["id"], "recover/"), {"since": iso(timezone.now())})

    assert response.status_code == 403


# --- Validation: each a 400 naming the field, nothing stored ---

LONG_URL = "https://hooks.example.com/" + "a" * (2048 - len("https://hooks.example.com/"))
BAD_URLS = {
    "not a string": 123,
    "null": None,
    "a list": [PUBLIC_URL],
    "empty": "",
    "relative": "/hooks/orders",
    "no scheme": "hooks.example.com/orders",
    "ftp": "ftp://hooks.example.com/orders",
    "javascript": "javascript:alert(1)",
    "too long": LONG_URL + "a",
    "user and password": "https://user:pass@hooks.example.com/orders",
    "token as user": "https://token@hooks.example.com/orders",
    "localhost": "http://localhost/hook",
    "loopback": "http://127.0.0.1/hook",
    "loopback with port": "http://127.0.0.1:8000/hook",
    "ipv6 loopback": "http://[::1]/hook",
    "hex loopback": "http://0x7f.1/hook",
    "decimal loopback": "http://2130706433/hook",
    "short loopback": "http://127.1/hook",
    "unspecified": "http://0.0.0.0/hook",
    "private 10": "http://10.0.0.1/hook",
    "private 192.168": "http://192.168.1.1/hook",
    "shared address space": "http://100.64.0.1/hook",
    "link-local metadata": "http://169.254.169.254/latest/meta-data/",
    "ipv4-mapped loopback": "http://[::ffff:127.0.0.1]/hook",
    "ipv6 unique local": "http://[fd00::1]/hook",
    "name resolving to private": "https://internal.example.com/hook",
    "nat64 loopback": "http://[64:ff9b::7f00:1]/hook",
    "nat64 metadata": "http://[64:ff9b::a9fe:a9fe]/hook",
    "local-use nat64 loopback": "http://[64:ff9b:1::7f00:1]/hook",
    "6to4 metadata": "http://[2002:a9fe:a9fe::]/hook",
    "6to4 private": "http://[2002:a00:1::1]/hook",
    "ipv4-compatible loopback": "http://[::7f00:1]/hook",
    "ipv4-translated loopback": "http://[::ffff:0:7f00:1]/hook",
    "teredo loopback client": "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",
    "name resolving to nat64 loopback": "https://nat64.example.com/hook",
}


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_a_bad_url_is_400_naming_url_and_stores_nothing(
    acme_api: Api, no_outside_dns: dict[str, list[str]], url: object
) -> None:
    no_outside_dns["internal.example.com"] = ["10.1.2.3"]
    no_outside_dns["nat64.example.com"] = ["64:ff9b::7f00:1"]

    response = acme_api.post(SUBSCRIPTIONS, {"url": url, "events": ["#"]})

    assert_rejected(response, "url")
    assert Subscription.objects.count() == 0


def test_a_missing_url_is_400(acme_api: Api) -> None:
    assert_rejected(acme_api.post(SUBSCRIPTIONS, {"events": ["#"]}), "url")
    assert Subscription.objects.count() == 0


def test_a_name_resolving_to_both_public_and_private_addresses_is_400(
    acme_api: Api, no_outside_dns: dict[str, list[str]]
) -> None:
    no_outside_dns["mixed.example.com"] = [PUBLIC_ADDRESS, "10.1.2.3"]

    assert_rejected(acme_api.post(SUBSCRIPTIONS, {"url": "https://mixed.example.com/", "events": ["#"]}), "url")


GOOD_URLS = {
    "public name": PUBLIC_URL,
    "public name with query": PUBLIC_URL + "?token=abc",
    "public ip": f"https://{PUBLIC_ADDRESS}:8443/hook",
    "nat64 of a public ip": "https://[64:ff9b::808:808]/hook",
    "6to4 of a public ip": "https://[2002:808:808::1]/hook",
    "name that does not resolve yet": "https://not-yet.example.org/hook",
    "exactly 2048 characters": LONG_URL,
}


@pytest.mark.parametrize("url", GOOD_URLS.values(), ids=GOOD_URLS.keys())
def test_a_good_url_is_accepted(acme_api: Api, url: str) -> None:
    assert create(acme_api, url=url)["url"] == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/hook", "http://localhost/hook", "http://10.0.0.1/hook"])
def test_private_urls_are_accepted_when_private_networks_are_allowed(
    acme_api: Api, allow_loopback: None, url: str
) -> None:
    assert create(acme_api, url=url)["url"] == url


BAD_EVENTS = {
    "empty list": [],
    "not a list": "order.created",
    "an object": {"order.created": True},
    "numbers": [1, 2],
    "a null": [None],
    "one bad among good": ["order.created", 5],
    "101 patterns": [f"order.e{i}" for i in range(101)],
    "upper case": ["Order.*"],
    "empty word": ["order..x"],
    "leading dot": [".order"],
    "double star": ["**"],
    "star inside a word": ["order.cr*"],
    "space": ["order created"],
    "empty pattern": [""],
    "11 words": [".".join(["a"] * 11)],
    "129 characters": ["a" * 129],
}


@pytest.mark.parametrize("events", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_bad_events_are_400_naming_events_and_store_nothing(acme_api: Api, events: object) -> None:
    response = acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": events})

    assert response.status_code == 400, response.content
    assert "events" in response.json()
    assert Subscription.objects.count() == 0


def test_missing_events_are_400(acme_api: Api) -> None:
    assert_rejected(acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL}), "events")


GOOD_EVENTS = {
    "100 patterns": [f"order.e{i}" for i in range(100)],
    "10 words": [".".join(["a"] * 10)],
    "128 characters": ["a" * 128],
    "wildcards": ["#", "order.*", "*.completed", "order.#", "a-b_c.9"],
}


@pytest.mark.parametrize("events", GOOD_EVENTS.values(), ids=GOOD_EVENTS.keys())
def test_good_events_are_accepted(acme_api: Api, events: list[str]) -> None:
    assert create(acme_api, events=events)["events"] == events


BAD_SECRETS = {
    "wrong prefix": "whsk_" + base64.b64encode(b"k" * 32).decode(),
    "no prefix": base64.b64encode(b"k" * 32).decode(),
    "not base64": "whsec_this is not base64!!",
    "url-safe base64": "whsec_" + base64.urlsafe_b64encode(b"\xff" * 32).decode(),
    "23 bytes": secret_of(b"k" * 23),
    "65 bytes": secret_of(b"k" * 65),
    "no padding": secret_of(b"k" * 32).rstrip("="),
    "not a string": 32,
    "empty": "",
}


@pytest.mark.parametrize("secret", BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_a_bad_secret_is_400_naming_secret_and_stores_nothing(acme_api: Api, secret: object) -> None:
    response = acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["#"], "secret": secret})

    assert_rejected(response, "secret")
    assert Subscription.objects.count() == 0


@pytest.mark.parametrize("size", [24, 64])
def test_secrets_of_24_to_64_bytes_are_accepted(acme_api: Api, size: int) -> None:
    secret = secret_of(bytes(range(size)))

    assert create(acme_api, secret=secret)["secret"] == secret


def test_a_description_over_500_characters_is_400(acme_api: Api) -> None:
    response = acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["#"], "description": "d" * 501})

    assert_rejected(response, "description")
    assert Subscription.objects.count() == 0
    assert create(acme_api, description="d" * 500)["description"] == "d" * 500


@pytest.mark.parametrize("field,value", [("description", 5), ("is_active", "false"), ("is_active", 0)])
def test_values_of_the_wrong_json_type_are_400(acme_api: Api, field: str, value: object) -> None:
    response = acme_api.post(SUBSCRIPTIONS, {"url": PUBLIC_URL, "events": ["#"], field: value})

    assert_rejected(response, field)
    assert Subscription.objects.count() == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"a string"', b"null"])
def test_a_body_that_is_not_a_json_object_is_400(acme_api: Api, raw: bytes) -> None:
    response = acme_api.http.generic("POST", SUBSCRIPTIONS, raw, content_type="application/json")

    assert response.status_code == 400, response.content
    assert isinstance(response.json(), dict)
    assert Subscription.objects.count() == 0
