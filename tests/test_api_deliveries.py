"""The deliveries API (CONTRACT.md section 3): listing, filters, attempts and redelivery against a real receiver."""

import socket
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.db import connection, transaction
from django.http import HttpResponse
from django.utils import timezone

from deliveries.models import Attempt, Delivery, Status
from deliveries.worker import claim, deliver_batch
from subscriptions.models import Subscription, Tenant
from tests.conftest import Api, reply_sequence
from tests.receiver import Receiver, Reply
from webhooks import publish
from webhooks.models import Event

pytestmark = pytest.mark.django_db

DELIVERIES = "/api/v1/deliveries/"
SUBSCRIPTIONS = "/api/v1/subscriptions/"
DELIVERY_FIELDS = {
    "id",
    "event",
    "event_type",
    "subscription",
    "status",
    "attempt_count",
    "next_attempt_at",
    "created_at",
    "completed_at",
}
ATTEMPT_FIELDS = {"number", "started_at", "duration_ms", "status_code", "error", "response_body", "success"}


@pytest.fixture(autouse=True)
def fast_client_secret_hashing(settings) -> None:
    """OAuth2 client secrets are stored hashed; the production hasher costs about a second per client."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def acme_subscription(acme_api: Api, receiver: Receiver, allow_loopback: None) -> Subscription:
    """An acme subscription to order events, pointing at the real local receiver."""
    return Subscription.objects.create(url=receiver.url(), events=["order.#"], tenant=Tenant.objects.get(slug="acme"))


# --- Helpers ---


def detail(delivery_id: str, suffix: str = "") -> str:
    return f"{DELIVERIES}{delivery_id}/{suffix}"


def publish_one(event_type: str = "order.created", tenant: str = "acme") -> Delivery:
    event = publish(event_type, {"order": 1}, tenant=tenant)
    return Delivery.objects.get(event=event)


def closed_port() -> int:
    """A local port nobody listens on: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_due(delivery: Delivery) -> None:
    """Time passes: the retry is due."""
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def ids(response: HttpResponse) -> list[str]:
    assert response.status_code == 200, response.content
    return [d["id"] for d in response.json()["results"]]


def deliveries_aged(subscription: Subscription, count: int) -> list[Delivery]:
    """``count`` deliveries, oldest first, each created a minute after the one before."""
    start = timezone.now() - timedelta(hours=1)
    made = []
    for i in range(count):
        created_at = start + timedelta(minutes=i)
        event = Event.objects.create(type="order.created", data={"i": i}, tenant=subscription.tenant)
        made.append(
            Delivery.objects.create(
                event=event,
                subscription=subscription,
                event_type=event.type,
                next_attempt_at=created_at + timedelta(days=1),
                created_at=created_at,
            )
        )
    return made


# --- List ---


def test_the_list_is_newest_first(acme_api: Api, acme_subscription: Subscription) -> None:
    made = deliveries_aged(acme_subscription, 3)
    # Insertion order is not creation order: the list must sort on created_at.
    Delivery.objects.filter(pk=made[0].pk).update(created_at=timezone.now())

    assert ids(acme_api.get(DELIVERIES)) == [made[0].id, made[2].id, made[1].id]


def test_the_list_is_paginated(acme_api: Api, acme_subscription: Subscription) -> None:
    made = deliveries_aged(acme_subscription, 25)

    first = acme_api.get(DELIVERIES).json()
    second = acme_api.get(first["next"]).json()
    small = acme_api.get(DELIVERIES, data={"page_size": 10, "page": 3}).json()

    assert set(first) == {"count", "next", "previous", "results"}
    assert first["count"] == 25 and len(first["results"]) == 20 and first["previous"] is None
    assert len(second["results"]) == 5 and second["next"] is None
    newest_first = [d.id for d in reversed(made)]
    assert [d["id"] for d in first["results"] + second["results"]] == newest_first
    assert [d["id"] for d in small["results"]] == newest_first[20:]
    assert all(set(d) == DELIVERY_FIELDS for d in first["results"])


@pytest.mark.parametrize("query", [{"page_size": "0"}, {"page_size": "x"}, {"page": "-1"}])
def test_a_bad_page_or_page_size_is_400(acme_api: Api, acme_subscription: Subscription, query: dict) -> None:
    deliveries_aged(acme_subscription, 1)

    response = acme_api.get(DELIVERIES, data=query)

    assert response.status_code == 400
    assert set(response.json()) == set(query)


def test_a_page_past_the_end_is_404(acme_api: Api, acme_subscription: Subscription) -> None:
    deliveries_aged(acme_subscription, 3)

    response = acme_api.get(DELIVERIES, data={"page": 2})

    assert response.status_code == 404
    assert "detail" in response.json()


def test_the_list_filters_by_subscription(acme_api: Api, acme_subscription: Subscription) -> None:
    other = Subscription.objects.create(url=acme_subscription.url, events=["#"], tenant=acme_subscription.tenant)
    event = publish("order.created", {}, tenant="acme")
    ours = Delivery.objects.get(event=event, subscription=acme_subscription)
    publish("invoice.paid", {}, tenant="acme")

    assert ids(acme_api.get(DELIVERIES, data={"subscription": acme_subscription.id})) == [ours.id]
    assert len(ids(acme_api.get(DELIVERIES, data={"subscription": other.id}))) == 2
    assert ids(acme_api.get(DELIVERIES, data={"subscription": "sub_unknown"})) == []


def test_the_list_filters_by_status(acme_api: Api, acme_subscription: Subscription) -> None:
    made = deliveries_aged(acme_subscription, 4)
    for delivery, status in zip(made, Status.values, strict=True):
        Delivery.objects.filter(pk=delivery.pk).update(status=status)

    for delivery, status in zip(made, Status.values, strict=True):
        assert ids(acme_api.get(DELIVERIES, data={"status": status})) == [delivery.id]


@pytest.mark.parametrize("status", ["done", "PENDING", "pending,failed", "0"])
def test_an_unknown_status_is_400(acme_api: Api, acme_subscription: Subscription, status: str) -> None:
    deliveries_aged(acme_subscription, 1)

    response = acme_api.get(DELIVERIES, data={"status": status})

    assert response.status_code == 400
    assert "status" in response.json()


def test_the_list_filters_by_event_type_and_by_event(acme_api: Api, acme_subscription: Subscription) -> None:
    created = publish_one("order.created")
    shipped = publish_one("order.shipped")

    assert ids(acme_api.get(DELIVERIES, data={"event_type": "order.shipped"})) == [shipped.id]
    assert ids(acme_api.get(DELIVERIES, data={"event": created.event_id})) == [created.id]
    assert ids(acme_api.get(DELIVERIES, data={"event": created.event_id, "event_type": "order.shipped"})) == []


def test_filters_combine(acme_api: Api, acme_subscription: Subscription) -> None:
    created = publish_one("order.created")
    publish_one("order.created")
    Delivery.objects.filter(pk=created.pk).update(status=Status.FAILED, next_attempt_at=None)

    query = {"event_type": "order.created", "status": "failed", "subscription": acme_subscription.id}
    assert ids(acme_api.get(DELIVERIES, data=query)) == [created.id]


def test_a_tenant_sees_only_its_own_deliveries(
    acme_api: Api, globex_api: Api, platform_api: Api, acme_subscription: Subscription
) -> None:
    Subscription.objects.create(url=acme_subscription.url, events=["#"], tenant=Tenant.objects.get(slug="globex"))
    ours = publish_one(tenant="acme")
    theirs = publish_one(tenant="globex")

    assert ids(acme_api.get(DELIVERIES)) == [ours.id]
    assert ids(globex_api.get(DELIVERIES)) == [theirs.id]
    assert set(ids(platform_api.get(DELIVERIES))) == {ours.id, theirs.id}
    assert acme_api.get(detail(theirs.id)).status_code == 404
    assert acme_api.post(detail(theirs.id, "redeliver/")).status_code == 404
    assert ids(acme_api.get(DELIVERIES, data={"subscription": theirs.subscription_id})) == []


@pytest.mark.parametrize(
    "scopes,call",
    [
        (["deliveries.write"], lambda api, d: api.get(DELIVERIES)),
        (["deliveries.write"], lambda api, d: api.get(detail(d.id))),
        (["deliveries.read"], lambda api, d: api.post(detail(d.id, "redeliver/"))),
    ],
    ids=["list needs read", "detail needs read", "redeliver needs write"],
)
def test_each_call_needs_its_scope(
    make_api: Callable[..., Api], acme_subscription: Subscription, scopes: list[str], call: Callable
) -> None:
    delivery = publish_one()
    api = make_api(tenant="acme", scopes=scopes, name="narrow")

    response = call(api, delivery)

    assert response.status_code == 403
    assert "detail" in response.json()


# --- Detail ---


def test_the_detail_shows_every_attempt_in_number_order(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver
) -> None:
    receiver.reply = reply_sequence(Reply(500, b"boom"), Reply(200, b"thanks"))
    delivery = publish_one()
    deliver_batch()
    make_due(delivery)
    deliver_batch()

    response = acme_api.get(detail(delivery.id))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == DELIVERY_FIELDS | {"attempts"}
    assert body["id"] == delivery.id and body["event"] == delivery.event_id
    assert body["subscription"] == acme_subscription.id and body["event_type"] == "order.created"
    assert body["status"] == "succeeded" and body["attempt_count"] == 2
    first, second = body["attempts"]
    assert set(first) == ATTEMPT_FIELDS
    assert (first["number"], first["status_code"], first["error"], first["response_body"], first["success"]) == (
        1,
        500,
        "HTTP 500",
        "boom",
        False,
    )
    assert (second["number"], second["status_code"], second["error"], second["response_body"], second["success"]) == (
        2,
        200,
        None,
        "thanks",
        True,
    )
    assert all(isinstance(a["duration_ms"], int) and a["duration_ms"] >= 0 for a in body["attempts"])
    assert first["started_at"] <= second["started_at"]


def test_attempts_recorded_out_of_order_are_shown_in_number_order(
    acme_api: Api, acme_subscription: Subscription
) -> None:
    delivery = publish_one()
    now = timezone.now()
    for number in (3, 1, 2):
        Attempt.objects.create(delivery=delivery, number=number, started_at=now, error="HTTP 500", status_code=500)

    body = acme_api.get(detail(delivery.id)).json()

    assert [a["number"] for a in body["attempts"]] == [1, 2, 3]


def test_a_network_error_attempt_has_no_status_code(acme_api: Api, acme_subscription: Subscription) -> None:
    Subscription.objects.filter(pk=acme_subscription.pk).update(url=f"http://127.0.0.1:{closed_port()}/hook")
    delivery = publish_one()
    deliver_batch()

    (attempt,) = acme_api.get(detail(delivery.id)).json()["attempts"]

    assert attempt["status_code"] is None and attempt["success"] is False
    assert attempt["error"] == "connection refused" and attempt["response_body"] == ""


def test_next_attempt_at_is_set_only_while_pending(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver
) -> None:
    receiver.reply = lambda request: Reply(500)
    retrying = publish_one()
    deliver_batch()
    made = deliveries_aged(acme_subscription, 3)
    for delivery, status in zip(made, [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED], strict=True):
        Delivery.objects.filter(pk=delivery.pk).update(status=status, next_attempt_at=None, completed_at=timezone.now())

    shown = {d["id"]: d for d in acme_api.get(DELIVERIES).json()["results"]}

    assert shown[retrying.id]["status"] == "pending" and shown[retrying.id]["next_attempt_at"] is not None
    assert shown[retrying.id]["completed_at"] is None
    for delivery in made:
        assert shown[delivery.id]["next_attempt_at"] is None
        assert shown[delivery.id]["completed_at"] is not None


def test_a_pending_delivery_being_sent_is_still_shown_with_its_due_time(
    acme_api: Api, acme_subscription: Subscription
) -> None:
    delivery = publish_one()

    body = acme_api.get(detail(delivery.id)).json()

    assert body["status"] == "pending" and body["next_attempt_at"] is not None
    assert body["attempt_count"] == 0 and body["attempts"] == []


def test_times_are_utc_ending_in_z(acme_api: Api, acme_subscription: Subscription, receiver: Receiver) -> None:
    receiver.reply = reply_sequence(Reply(200), Reply(500))
    done = publish_one()
    deliver_batch()
    retrying = publish_one()
    deliver_batch()

    done_body, retrying_body = (acme_api.get(detail(d.id)).json() for d in (done, retrying))

    stamps = [done_body["created_at"], done_body["completed_at"], done_body["attempts"][0]["started_at"]]
    stamps += [
        retrying_body["created_at"],
        retrying_body["next_attempt_at"],
        retrying_body["attempts"][0]["started_at"],
    ]
    assert all(isinstance(s, str) and s.endswith("Z") and "+" not in s for s in stamps), stamps


# --- Redeliver ---


def test_redeliver_makes_a_delivery_pending_and_due_now(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver
) -> None:
    delivery = publish_one()
    deliver_batch()
    assert Delivery.objects.get(pk=delivery.pk).status == Status.SUCCEEDED

    response = acme_api.post(detail(delivery.id, "redeliver/"))

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["id"] == delivery.id and body["status"] == "pending" and body["completed_at"] is None
    assert [a["number"] for a in body["attempts"]] == [1]
    delivery.refresh_from_db()
    assert delivery.status == Status.PENDING
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= timezone.now()
    assert Delivery.objects.due().filter(pk=delivery.pk).exists()


def test_a_redelivery_continues_the_attempt_numbers_with_the_same_webhook_id(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver
) -> None:
    delivery = publish_one()
    deliver_batch()
    acme_api.post(detail(delivery.id, "redeliver/"))

    assert deliver_batch() == 1

    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.event_id
    assert (first.headers["X-Webhook-Attempt"], second.headers["X-Webhook-Attempt"]) == ("1", "2")
    assert first.body == second.body
    body = acme_api.get(detail(delivery.id)).json()
    assert body["status"] == "succeeded" and body["attempt_count"] == 2
    assert [a["number"] for a in body["attempts"]] == [1, 2]


def test_redelivering_a_failed_delivery_gives_it_a_fresh_retry_schedule(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver, settings
) -> None:
    settings.WEBHOOK_RETRY_SCHEDULE = [60]
    receiver.reply = lambda request: Reply(503)
    delivery = publish_one()
    deliver_batch()
    make_due(delivery)
    deliver_batch()
    assert Delivery.objects.get(pk=delivery.pk).status == Status.FAILED

    acme_api.post(detail(delivery.id, "redeliver/"))
    deliver_batch()

    delivery.refresh_from_db()
    # A spent schedule would fail it at once; a fresh one waits WEBHOOK_RETRY_SCHEDULE[0] again.
    assert delivery.status == Status.PENDING and delivery.attempt_count == 3
    wait = delivery.next_attempt_at - timezone.now()
    assert timedelta(seconds=50) < wait <= timedelta(seconds=60)
    assert len(receiver.requests) == 3


@pytest.mark.django_db(transaction=True)
def test_redeliver_answers_with_the_state_it_wrote_though_a_worker_claims_the_row_at_once(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver
) -> None:
    delivery = publish_one()
    deliver_batch()
    claimed: dict[str, int] = {}

    def claim_when_committed(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith('UPDATE "deliveries_delivery" SET "status"'):
            # A worker's real claim, run the moment the redeliver commits and before the view answers.
            transaction.on_commit(lambda: claimed.update(claim(10)))
        return result

    before = timezone.now()
    with connection.execute_wrapper(claim_when_committed):
        response = acme_api.post(detail(delivery.id, "redeliver/"))
    after = timezone.now()

    assert claimed == {delivery.id: 2}, "the worker did not claim the row between the write and the answer"
    leased = Delivery.objects.get(pk=delivery.pk)
    assert leased.next_attempt_at > after and leased.attempt_count == 2
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["attempt_count"], body["completed_at"]) == ("pending", 1, None)
    assert before <= datetime.fromisoformat(body["next_attempt_at"]) <= after, "answered with the lease"
    assert [a["number"] for a in body["attempts"]] == [1]


def test_redeliver_is_409_when_the_subscription_is_inactive(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver
) -> None:
    delivery = publish_one()
    deliver_batch()
    acme_api.patch(f"{SUBSCRIPTIONS}{acme_subscription.id}/", {"is_active": False})

    response = acme_api.post(detail(delivery.id, "redeliver/"))

    assert response.status_code == 409
    assert "detail" in response.json()
    assert Delivery.objects.get(pk=delivery.pk).status == Status.SUCCEEDED


def test_redeliver_is_409_when_the_subscription_is_deleted(
    acme_api: Api, acme_subscription: Subscription, receiver: Receiver
) -> None:
    delivery = publish_one()
    deliver_batch()
    assert acme_api.delete(f"{SUBSCRIPTIONS}{acme_subscription.id}/").status_code == 204

    response = acme_api.post(detail(delivery.id, "redeliver/"))

    assert response.status_code == 409
    assert acme_api.get(detail(delivery.id)).json()["status"] == "succeeded"
    assert deliver_batch() == 0
    assert len(receiver.requests) == 1


def test_redelivering_an_unknown_delivery_is_404(acme_api: Api) -> None:
    response = acme_api.post(detail("dlv_unknown", "redeliver/"))

    assert response.status_code == 404
    assert "detail" in response.json()


def test_deliveries_are_read_only_apart_from_redeliver(acme_api: Api, acme_subscription: Subscription) -> None:
    delivery = publish_one()

    assert acme_api.post(DELIVERIES, {"event": delivery.event_id}).status_code == 405
    assert acme_api.patch(detail(delivery.id), {"status": "succeeded"}).status_code == 405
    assert acme_api.delete(detail(delivery.id)).status_code == 405
    assert "detail" in acme_api.delete(detail(delivery.id)).json()
    assert Delivery.objects.get(pk=delivery.pk).status == Status.PENDING
