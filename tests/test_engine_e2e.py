"""The delivery engine end to end: real PostgreSQL, Redis, a Celery worker process and a local receiver."""

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from deliveries.models import Delivery, Status
from subscriptions.models import Subscription
from tests.conftest import reply_sequence
from tests.receiver import Receiver, Reply
from tests.standard_webhooks import signature_is_valid
from webhooks import publish

pytestmark = pytest.mark.services


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def delivery_of(event_id: str) -> Delivery:
    return Delivery.objects.get(event_id=event_id)


def test_a_published_event_arrives_with_its_body_and_signed_headers(start_worker, receiver: Receiver) -> None:
    start_worker()
    subscription = Subscription.objects.create(url=receiver.url("/hook?token=abc"), events=["order.*"])

    event = publish("order.created", {"order": 42, "total": "9.99"})

    (request,) = receiver.wait_for(1)
    assert request.path == "/hook?token=abc"
    assert json.loads(request.body) == {
        "id": event.id,
        "type": "order.created",
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": {"order": 42, "total": "9.99"},
    }
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("Hookrelay/")
    assert headers["webhook-id"] == headers["X-Webhook-Id"] == event.id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    assert signature_is_valid(subscription.secret, headers, request.body)
    key = base64.b64decode(subscription.secret.removeprefix("whsec_"))
    assert headers["X-Webhook-Signature"] == "sha256=" + hmac.new(key, request.body, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Event"] == "order.created"
    assert headers["X-Webhook-Attempt"] == "1"
    assert headers["X-Correlation-Id"] == event.correlation_id
    wait_until(lambda: delivery_of(event.id).status == Status.SUCCEEDED)
    attempt = delivery_of(event.id).attempts.get()
    assert (attempt.number, attempt.status_code, attempt.success, attempt.response_body) == (1, 200, True, "ok")


def test_creating_a_user_delivers_user_created(start_worker, receiver: Receiver) -> None:
    start_worker()
    Subscription.objects.create(url=receiver.url(), events=["user.*"])

    User.objects.create_user("alice", "alice@example.com", "correct horse battery staple")

    (request,) = receiver.wait_for(1)
    body = json.loads(request.body)
    assert body["type"] == "user.created"
    assert body["data"]["username"] == "alice"
    assert "password" not in body["data"]


def test_retries_follow_the_schedule_then_the_delivery_fails_and_alerts(
    start_worker, receiver: Receiver, tmp_path
) -> None:
    worker = start_worker(WEBHOOK_RETRY_SCHEDULE="1,2,3")
    receiver.reply = lambda request: Reply(status=500, body=b"boom")
    subscription = Subscription.objects.create(url=receiver.url("/hook?token=secret-token"), events=["#"])

    event = publish("invoice.paid", {"invoice": 7})

    requests = receiver.wait_for(4, timeout=40)
    wait_until(lambda: delivery_of(event.id).status == Status.FAILED)
    gaps = [later.arrived_at - earlier.arrived_at for earlier, later in zip(requests, requests[1:], strict=False)]
    for gap, scheduled in zip(gaps, [1, 2, 3], strict=True):
        assert scheduled - 0.05 <= gap < scheduled + 5, gaps
    assert [r.headers["X-Webhook-Attempt"] for r in requests] == ["1", "2", "3", "4"]
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    delivery = delivery_of(event.id)
    assert delivery.attempts.count() == 4
    assert [a.error for a in delivery.attempts.order_by("number")] == ["HTTP 500"] * 4

    log = worker.output()
    wait_until(lambda: "delivery failed" in worker.output(), timeout=10)
    log = worker.output()
    line = next(line for line in log.splitlines() if "delivery failed" in line)
    assert "ERROR" in line and event.id in line and subscription.id in line and "HTTP 500" in line
    assert "/hook" in line and "secret-token" not in line

    def mail() -> str:  # the file backend may still be writing when the ERROR line is out
        folder = tmp_path / "mail"
        return "".join(path.read_text() for path in folder.iterdir()) if folder.exists() else ""

    wait_until(lambda: "Webhook delivery failed" in mail(), timeout=10)
    assert event.id in mail() and "ops@example.com" in mail()
    time.sleep(1.5)
    assert len(receiver.requests) == 4


def test_a_410_disables_the_subscription_and_fails_the_delivery(start_worker, receiver: Receiver) -> None:
    start_worker()
    receiver.reply = lambda request: Reply(status=410, body=b"gone")
    subscription = Subscription.objects.create(url=receiver.url(), events=["#"])

    event = publish("order.created", {})

    receiver.wait_for(1)
    wait_until(lambda: delivery_of(event.id).status == Status.FAILED)
    wait_until(lambda: not Subscription.objects.get(pk=subscription.pk).is_active, timeout=5)
    subscription.refresh_from_db()
    assert "410" in subscription.disabled_reason
    publish("order.created", {})
    time.sleep(1.5)
    assert len(receiver.requests) == 1


def test_redirects_are_not_followed(start_worker, receiver: Receiver) -> None:
    start_worker(WEBHOOK_RETRY_SCHEDULE="60")
    receiver.reply = lambda request: (
        Reply(status=302, headers={"Location": receiver.url("/elsewhere")}) if request.path == "/hook" else Reply()
    )
    Subscription.objects.create(url=receiver.url("/hook"), events=["#"])

    event = publish("order.created", {})

    wait_until(lambda: delivery_of(event.id).attempts.exists())
    attempt = delivery_of(event.id).attempts.get()
    assert (attempt.status_code, attempt.error, attempt.success) == (302, "HTTP 302", False)
    time.sleep(0.5)
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_private_addresses_are_blocked_when_sending(start_worker, receiver: Receiver) -> None:
    start_worker(WEBHOOK_ALLOW_PRIVATE_NETWORKS="false", WEBHOOK_RETRY_SCHEDULE="60")
    # Registered as if it had resolved to a public address; by send time it points at loopback.
    Subscription.objects.create(url=receiver.url(), events=["#"])

    event = publish("order.created", {})

    wait_until(lambda: delivery_of(event.id).attempts.exists())
    attempt = delivery_of(event.id).attempts.get()
    assert (attempt.status_code, attempt.error) == (None, "blocked: private address")
    assert receiver.requests == []


def test_a_recovering_endpoint_gets_the_delivery_on_retry(start_worker, receiver: Receiver) -> None:
    start_worker(WEBHOOK_RETRY_SCHEDULE="1,1")
    receiver.reply = reply_sequence(Reply(status=503), Reply(status=200))
    Subscription.objects.create(url=receiver.url(), events=["#"])

    event = publish("order.created", {})

    receiver.wait_for(2)
    wait_until(lambda: delivery_of(event.id).status == Status.SUCCEEDED)
    assert [a.success for a in delivery_of(event.id).attempts.order_by("number")] == [False, True]


RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_missing() -> str | None:
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=3) as broker:
            broker.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"RabbitMQ at {RABBITMQ_URL} does not answer: {exc}"
    return None


def test_rabbitmq_works_as_the_broker(start_worker, receiver: Receiver) -> None:
    missing = rabbitmq_missing()
    if missing:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from kombu import Connection

    from deliveries.tasks import drain

    start_worker(beat=False, CELERY_BROKER_URL=RABBITMQ_URL)
    Subscription.objects.create(url=receiver.url(), events=["#"])
    with transaction.atomic():
        event = publish("order.created", {"broker": "rabbitmq"})
    with Connection(RABBITMQ_URL) as broker:
        drain.apply_async(connection=broker)  # the wake-up, through RabbitMQ

    (request,) = receiver.wait_for(1)
    assert request.headers["webhook-id"] == event.id
    wait_until(lambda: delivery_of(event.id).status == Status.SUCCEEDED)
