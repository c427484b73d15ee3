"""The delivery loop, called in-process against a real local HTTP receiver."""

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.core import mail
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from deliveries import actions, signals
from deliveries.models import Attempt, Delivery, Status
from deliveries.worker import claim, claim_deliveries, deliver_batch, drain, drain_session
from subscriptions.models import Subscription
from tests.conftest import reply_sequence
from tests.receiver import Receiver, Reply
from webhooks import correlation, publish
from webhooks.models import Event

pytestmark = pytest.mark.django_db


# --- Helpers ---


def delivery_of(event: Event) -> Delivery:
    return Delivery.objects.get(event=event)


def attempts_of(delivery: Delivery) -> list[Attempt]:
    return list(Attempt.objects.filter(delivery=delivery).order_by("number"))


def make_due(delivery: Delivery) -> None:
    """Time passes: the retry (or the lease) is now due."""
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def standard_webhooks_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks v1, written from the spec rather than from subscriptions.signing."""
    key = base64.b64decode(secret[len("whsec_") :])
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@pytest.fixture
def failures() -> Iterator[list[Delivery]]:
    """Deliveries reported by the delivery_failed signal."""
    seen: list[Delivery] = []

    def on_failed(sender: type, delivery: Delivery, **kwargs: object) -> None:
        seen.append(delivery)

    signals.delivery_failed.connect(on_failed, weak=False, dispatch_uid="test-worker-failures")
    yield seen
    signals.delivery_failed.disconnect(dispatch_uid="test-worker-failures")


@pytest.fixture
def alert_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    # settings.LOGGING keeps "hookrelay" records off the root logger, where caplog listens.
    monkeypatch.setattr(logging.getLogger("hookrelay"), "propagate", True)
    caplog.set_level(logging.INFO, logger="hookrelay")
    return caplog


# --- Success ---


def test_a_success_records_one_attempt_and_ends_succeeded(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscription = subscribe(receiver.url())
    delivery = delivery_of(publish("order.created", {"id": 1}))

    assert deliver_batch() == 1

    delivery.refresh_from_db()
    assert delivery.status == Status.SUCCEEDED
    assert delivery.completed_at is not None
    assert delivery.next_attempt_at is None
    assert delivery.attempt_count == 1
    [attempt] = attempts_of(delivery)
    assert (attempt.number, attempt.status_code, attempt.success, attempt.error) == (1, 200, True, None)
    assert attempt.response_body == "ok"
    assert attempt.started_at <= delivery.completed_at
    assert len(receiver.requests) == 1
    subscription.refresh_from_db()
    assert subscription.last_success_at is not None


def test_the_receiver_gets_the_signed_event_with_the_contract_headers(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscription = subscribe(receiver.url("/hook?token=abc"))
    token = correlation.current.set("corr-7")
    try:
        event = publish("order.created", {"id": 7, "note": "café"})
    finally:
        correlation.current.reset(token)
    before = int(time.time())

    deliver_batch()

    [request] = receiver.requests
    headers = lower(request.headers)
    assert request.path == "/hook?token=abc"
    assert json.loads(request.body) == Event.objects.get(pk=event.pk).payload()
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("Hookrelay/")
    assert headers["webhook-id"] == event.id
    assert headers["x-webhook-id"] == event.id
    assert headers["x-webhook-event"] == "order.created"
    assert headers["x-webhook-attempt"] == "1"
    assert headers["x-correlation-id"] == "corr-7"
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    assert headers["webhook-signature"] == standard_webhooks_signature(
        subscription.secret, event.id, headers["webhook-timestamp"], request.body
    )
    key = base64.b64decode(subscription.secret[len("whsec_") :])
    assert headers["x-webhook-signature"] == "sha256=" + hmac.new(key, request.body, hashlib.sha256).hexdigest()


def test_during_a_secret_rotation_the_body_carries_both_signatures(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscription = subscribe(receiver.url())
    old_secret = subscription.secret
    new_secret = subscription.rotate_secret()
    event = publish("order.created", {"id": 1})

    deliver_batch()

    [request] = receiver.requests
    headers = lower(request.headers)
    timestamp = headers["webhook-timestamp"]
    assert headers["webhook-signature"].split(" ") == [
        standard_webhooks_signature(new_secret, event.id, timestamp, request.body),
        standard_webhooks_signature(old_secret, event.id, timestamp, request.body),
    ]


def test_every_subscription_gets_the_same_webhook_id_for_one_event(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscribe(receiver.url("/a"))
    subscribe(receiver.url("/b"))
    event = publish("order.created", {"id": 1})

    assert deliver_batch() == 2

    assert sorted(r.path for r in receiver.requests) == ["/a", "/b"]
    assert {lower(r.headers)["webhook-id"] for r in receiver.requests} == {event.id}


def test_drain_delivers_batch_after_batch_until_nothing_is_due(
    settings, receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_BATCH_SIZE = 2
    subscribe(receiver.url())
    events = [publish("order.created", {"n": n}) for n in range(5)]

    assert drain() == 5

    assert sorted(lower(r.headers)["webhook-id"] for r in receiver.requests) == sorted(e.id for e in events)
    assert set(Delivery.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert drain() == 0


# --- Failure and retries ---


def test_a_failure_is_retried_after_the_schedule_counted_from_the_end_of_the_attempt(
    settings, receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_RETRY_SCHEDULE = [1, 2, 3]
    receiver.reply = lambda request: Reply(status=500, body=b"boom", delay=0.3)
    subscribe(receiver.url())
    delivery = delivery_of(publish("order.created", {"id": 1}))

    for number, wait in [(1, 1), (2, 2), (3, 3)]:
        make_due(delivery)
        deliver_batch()
        after = timezone.now()
        assert deliver_batch() == 0, "a retry must not go out before it is due"

        delivery.refresh_from_db()
        attempt = attempts_of(delivery)[-1]
        assert (attempt.number, attempt.status_code, attempt.error) == (number, 500, "HTTP 500")
        assert attempt.success is False
        assert attempt.response_body == "boom"
        assert attempt.duration_ms >= 300
        ended = attempt.started_at + timedelta(milliseconds=attempt.duration_ms)
        assert delivery.status == Status.PENDING
        assert delivery.next_attempt_at == ended + timedelta(seconds=wait)
        assert delivery.next_attempt_at - attempt.started_at >= timedelta(seconds=wait + 0.3)
        assert delivery.next_attempt_at <= after + timedelta(seconds=wait)

    assert [lower(r.headers)["x-webhook-attempt"] for r in receiver.requests] == ["1", "2", "3"]


def test_after_the_last_retry_the_delivery_fails_and_every_alert_fires(
    settings,
    receiver: Receiver,
    allow_loopback: None,
    subscribe: Callable[..., Subscription],
    failures: list[Delivery],
    alert_log: pytest.LogCaptureFixture,
) -> None:
    settings.WEBHOOK_RETRY_SCHEDULE = [1, 2, 3]
    settings.ADMINS = [("Ops", "ops@example.com")]
    receiver.reply = lambda request: Reply(status=503)
    subscription = subscribe(receiver.url("/hook?token=s3cret"))
    event = publish("order.created", {"id": 1})
    delivery = delivery_of(event)

    for _ in range(3):
        deliver_batch()
        delivery.refresh_from_db()
        assert delivery.status == Status.PENDING
        assert failures == []
        make_due(delivery)
    deliver_batch()

    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED
    assert delivery.completed_at is not None
    assert delivery.next_attempt_at is None
    assert [a.number for a in attempts_of(delivery)] == [1, 2, 3, 4]
    assert len(receiver.requests) == 4
    make_due(delivery)
    assert deliver_batch() == 0

    assert [d.id for d in failures] == [delivery.id]
    safe = receiver.url("/hook")
    [email] = mail.outbox
    assert email.to == ["ops@example.com"]
    assert "order.created" in email.subject
    assert safe in email.subject
    assert all(part in email.body for part in (event.id, subscription.id, safe, "HTTP 503"))
    [record] = [r for r in alert_log.records if r.name == "hookrelay.alerts"]
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert all(part in message for part in (event.id, subscription.id, safe, "HTTP 503"))
    assert "s3cret" not in message + email.subject + email.body


def test_a_network_error_is_a_failure_without_a_status_code(
    settings, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    server = Receiver().start()
    url = server.url()
    server.stop()
    subscribe(url)
    delivery = delivery_of(publish("order.created", {"id": 1}))

    deliver_batch()

    delivery.refresh_from_db()
    [attempt] = attempts_of(delivery)
    assert attempt.status_code is None
    assert attempt.error == "connection refused"
    assert attempt.success is False
    assert delivery.status == Status.PENDING
    assert delivery.next_attempt_at > timezone.now()


def test_a_redirect_is_a_failure_and_its_location_is_never_requested(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    receiver.reply = lambda request: (
        Reply(status=302, headers={"Location": receiver.url("/elsewhere")}) if request.path == "/hook" else Reply()
    )
    subscribe(receiver.url("/hook"))
    delivery = delivery_of(publish("order.created", {"id": 1}))

    deliver_batch()

    [attempt] = attempts_of(delivery)
    assert (attempt.status_code, attempt.error, attempt.success) == (302, "HTTP 302", False)
    assert [r.path for r in receiver.requests] == ["/hook"]
    delivery.refresh_from_db()
    assert delivery.status == Status.PENDING


# --- Disabling subscriptions ---


def test_410_gone_disables_the_subscription_and_fails_its_other_pending_deliveries(
    receiver: Receiver,
    allow_loopback: None,
    subscribe: Callable[..., Subscription],
    failures: list[Delivery],
    django_capture_on_commit_callbacks: Callable,
) -> None:
    receiver.reply = lambda request: Reply(status=410, body=b"gone")
    subscription = subscribe(receiver.url())
    gone = delivery_of(publish("order.created", {"id": 1}))
    waiting = delivery_of(publish("order.created", {"id": 2}))
    disabled: list[str] = []

    def on_disabled(sender: type, subscription: Subscription, reason: str, **kwargs: object) -> None:
        disabled.append(reason)

    signals.subscription_disabled.connect(on_disabled)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert deliver_batch(limit=1) == 1
    finally:
        signals.subscription_disabled.disconnect(on_disabled)

    assert len(receiver.requests) == 1
    subscription.refresh_from_db()
    assert subscription.is_active is False
    assert "410" in subscription.disabled_reason
    assert disabled == [subscription.disabled_reason]
    gone.refresh_from_db()
    assert gone.status == Status.FAILED
    assert gone.completed_at is not None
    [attempt] = attempts_of(gone)
    assert (attempt.number, attempt.status_code, attempt.error) == (1, 410, "HTTP 410")
    assert [d.id for d in failures] == [gone.id]
    waiting.refresh_from_db()
    assert waiting.status == Status.FAILED
    assert waiting.next_attempt_at is None
    [skipped] = attempts_of(waiting)
    assert (skipped.number, skipped.status_code, skipped.error, skipped.success) == (
        1,
        None,
        "subscription disabled",
        False,
    )
    assert deliver_batch() == 0
    assert len(receiver.requests) == 1


def test_consecutive_failed_deliveries_disable_the_subscription_and_a_success_resets_the_count(
    settings, receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_DISABLE_AFTER = 3
    settings.WEBHOOK_RETRY_SCHEDULE = []
    receiver.reply = reply_sequence(Reply(500), Reply(500), Reply(200), Reply(500), Reply(500), Reply(500))
    subscription = subscribe(receiver.url())

    def deliver_one() -> Delivery:
        delivery = delivery_of(publish("order.created", {}))
        deliver_batch()
        delivery.refresh_from_db()
        subscription.refresh_from_db()
        return delivery

    outcomes = []
    for expected_count in [1, 2, 0, 1, 2]:
        outcomes.append(deliver_one().status)
        assert subscription.consecutive_failures == expected_count
        assert subscription.is_active is True

    assert outcomes == [Status.FAILED, Status.FAILED, Status.SUCCEEDED, Status.FAILED, Status.FAILED]
    assert deliver_one().status == Status.FAILED
    assert subscription.is_active is False
    assert subscription.disabled_reason == "3 consecutive failed deliveries"
    assert publish("order.created", {}).delivery_count == 0


def test_a_row_whose_subscription_was_deactivated_before_the_send_fails_without_a_request(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscription = subscribe(receiver.url())
    delivery = delivery_of(publish("order.created", {"id": 1}))
    Subscription.objects.filter(pk=subscription.pk).update(is_active=False)

    assert deliver_batch() == 1

    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED
    assert delivery.last_error == "subscription disabled"
    [attempt] = attempts_of(delivery)
    assert (attempt.number, attempt.status_code, attempt.error) == (1, None, "subscription disabled")
    assert receiver.requests == []


def test_deactivating_a_subscription_fails_its_pending_deliveries_so_recover_can_bring_them_back(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscription = subscribe(receiver.url())
    delivery = delivery_of(publish("order.created", {"id": 1}))

    assert actions.disable_subscription(subscription, "turned off by the operator") == 1

    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED
    assert [a.error for a in attempts_of(delivery)] == ["subscription disabled"]
    actions.enable_subscription(subscription)
    assert actions.recover(subscription, delivery.created_at) == 1
    deliver_batch()
    delivery.refresh_from_db()
    assert delivery.status == Status.SUCCEEDED
    assert [a.number for a in attempts_of(delivery)] == [1, 2]
    assert lower(receiver.requests[0].headers)["x-webhook-attempt"] == "2"


def test_soft_deleting_a_subscription_cancels_its_pending_deliveries(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscription = subscribe(receiver.url())
    pending = delivery_of(publish("order.created", {"id": 1}))
    Delivery.objects.filter(pk=pending.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    done = delivery_of(publish("order.created", {"id": 2}))
    deliver_batch()

    assert actions.delete_subscription(subscription) == 1

    pending.refresh_from_db()
    assert pending.status == Status.CANCELLED
    assert pending.next_attempt_at is None
    assert pending.completed_at is not None
    done.refresh_from_db()
    assert done.status == Status.SUCCEEDED
    assert set(Delivery.objects.filter(subscription=subscription).values_list("id", flat=True)) == {
        pending.id,
        done.id,
    }
    make_due(pending)
    assert deliver_batch() == 0
    assert len(receiver.requests) == 1


def test_a_claimed_row_of_a_subscription_deleted_meanwhile_is_cancelled_without_a_request(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscription = subscribe(receiver.url())
    delivery = delivery_of(publish("order.created", {"id": 1}))
    Subscription.objects.filter(pk=subscription.pk).update(is_active=False, deleted_at=timezone.now())

    assert deliver_batch() == 1

    delivery.refresh_from_db()
    assert delivery.status == Status.CANCELLED
    assert receiver.requests == []


def test_a_claimed_row_whose_subscription_row_is_gone_is_cancelled_and_the_others_are_sent(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription], alert_log
) -> None:
    # No foreign key holds a delivery to its subscription (migration 0003): a publish racing a delete by
    # hand can leave such a row. It must not stop the drain nor come back with every lease.
    subscribe(receiver.url())
    kept = delivery_of(publish("order.created", {"id": 1}))
    orphan = Delivery.objects.create(event=kept.event, subscription_id="sub_gone", event_type="order.created")
    Delivery.objects.filter(pk=orphan.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))

    assert deliver_batch() == 1

    orphan.refresh_from_db()
    kept.refresh_from_db()
    assert (orphan.status, orphan.attempt_count, orphan.next_attempt_at) == (Status.CANCELLED, 0, None)
    assert kept.status == Status.SUCCEEDED
    assert len(receiver.requests) == 1
    assert f"subscription no longer exists: {orphan.pk}" in alert_log.text
    assert claim(10) == {}


def test_postgresql_refuses_to_delete_a_subscription_its_deliveries_reference(
    subscribe: Callable[..., Subscription],
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the trigger is PostgreSQL's")
    subscription, other = subscribe("https://hooks.example.com/in"), subscribe("https://hooks.example.com/other")
    publish("order.created", {"id": 1})
    Delivery.objects.filter(subscription=other).delete()

    for statement in (
        "DELETE FROM subscriptions_subscription WHERE id = %s",
        "UPDATE subscriptions_subscription SET id = 'sub_new' WHERE id = %s",
    ):
        with (
            pytest.raises(IntegrityError, match="still referenced by deliveries"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [subscription.pk])
    # Unreferenced, or through the ORM, which deletes the deliveries (and their attempts) first.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM subscriptions_subscription WHERE id = %s", [other.pk])
    subscription.delete()
    assert not Subscription.objects.exists()
    assert not Delivery.objects.exists()


@pytest.mark.django_db(transaction=True)  # the other session must see the subscription
def test_a_publish_takes_no_lock_on_its_subscriptions_row(subscribe: Callable[..., Subscription]) -> None:
    # A foreign key's check locked the subscription's row (FOR KEY SHARE) for every delivery inserted:
    # publishers to one subscription queued on that row, each publish making a MultiXact (issue 6).
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's")
    import psycopg

    subscription = subscribe("https://hooks.example.com/in")
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # any check runs, and locks, at the insert
        delivery_of(publish("order.created", {"id": 1}))
        with psycopg.connect(**connection.get_connection_params()) as other:
            other.execute("SET lock_timeout = '1s'")
            locked = other.execute(
                "SELECT id FROM subscriptions_subscription WHERE id = %s FOR UPDATE NOWAIT", [subscription.pk]
            ).fetchall()
    assert locked == [(subscription.pk,)]


# --- Claiming ---


def test_a_claimed_row_is_not_claimed_again_while_its_lease_lasts(subscribe: Callable[..., Subscription]) -> None:
    subscribe("https://hooks.example.com/in")
    delivery = delivery_of(publish("order.created", {"id": 1}))

    assert claim(10) == {delivery.id: 1}
    assert claim(10) == {}

    delivery.refresh_from_db()
    assert delivery.status == Status.PENDING
    assert delivery.next_attempt_at > timezone.now()
    make_due(delivery)
    assert claim(10) == {delivery.id: 2}


def generic_plan(sql: str, params: dict) -> str:
    """The plan PostgreSQL runs a prepared statement with once it settles on a generic plan (after five runs,
    if that looks no dearer than planning anew: so on a table that looked small), in a drain's session."""
    names: list[str] = []

    def numbered(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    sql = re.sub(r"%\((\w+)\)s", numbered, sql)
    with drain_session(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE generic AS {sql}")
        cursor.execute("EXPLAIN EXECUTE generic(" + ", ".join(["%s"] * len(names)) + ")",
                       [params[name] for name in names])  # fmt: skip
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE generic")
    return plan


def test_a_claims_generic_plan_goes_by_the_due_index(subscribe: Callable[..., Subscription]) -> None:
    # It must find due rows by the partial index "delivery_due", not read every pending row by status and
    # sort them: "status = $1" cannot prove the index's predicate, so 'pending' is written in the statement.
    if connection.vendor != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    from deliveries.worker import _claim_loader, _claim_params

    subscribe("https://hooks.example.com/in")
    publish("order.created", {"id": 1})

    plan = generic_plan(_claim_loader()[0], _claim_params(10, set(), None))

    assert "Index Scan using delivery_due" in plan, plan
    assert "Sort" not in plan.split("CTE claimed")[0], plan


def test_a_record_is_planned_at_each_run_and_a_claim_once_per_connection(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    # A record's plan made once, while the table looked small, read every delivery for each batch.
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    subscribe(receiver.url())
    for n in range(3):
        publish("order.created", {"n": n})
        assert deliver_batch() == 1

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    assert any(statement.startswith("WITH due AS") for statement in prepared), prepared
    assert not any(statement.startswith("WITH v AS") for statement in prepared), prepared
    assert Attempt.objects.filter(success=True).count() == 3


def test_claim_takes_at_most_the_limit_oldest_due_first(subscribe: Callable[..., Subscription]) -> None:
    subscribe("https://hooks.example.com/in")
    first, second, third = (delivery_of(publish("order.created", {"n": n})) for n in range(3))
    Delivery.objects.filter(pk=third.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=1))

    assert claim(1) == {first.id: 1}
    assert claim(5) == {second.id: 1}


# --- Redeliver and recover ---


def test_redeliver_keeps_the_webhook_id_and_numbers_attempts_on(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    subscribe(receiver.url())
    event = publish("order.created", {"id": 1})
    delivery = delivery_of(event)
    deliver_batch()

    assert actions.redeliver(delivery) == 1
    delivery.refresh_from_db()
    assert delivery.status == Status.PENDING
    assert delivery.completed_at is None
    assert delivery.next_attempt_at <= timezone.now()
    deliver_batch()

    delivery.refresh_from_db()
    assert delivery.status == Status.SUCCEEDED
    assert [a.number for a in attempts_of(delivery)] == [1, 2]
    assert [lower(r.headers)["webhook-id"] for r in receiver.requests] == [event.id, event.id]
    assert [lower(r.headers)["x-webhook-attempt"] for r in receiver.requests] == ["1", "2"]
    assert receiver.requests[0].body == receiver.requests[1].body


def test_redeliver_starts_a_fresh_retry_schedule(
    settings, receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_RETRY_SCHEDULE = [1]
    receiver.reply = lambda request: Reply(status=500)
    subscribe(receiver.url())
    delivery = delivery_of(publish("order.created", {"id": 1}))
    deliver_batch()
    make_due(delivery)
    deliver_batch()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.failures) == (Status.FAILED, 2)

    actions.redeliver(delivery)
    delivery.refresh_from_db()
    assert delivery.failures == 0
    deliver_batch()

    delivery.refresh_from_db()
    [attempt] = attempts_of(delivery)[2:]
    assert attempt.number == 3
    assert delivery.status == Status.PENDING, "the first failure after a redeliver is retried again"
    ended = attempt.started_at + timedelta(milliseconds=attempt.duration_ms)
    assert delivery.next_attempt_at == ended + timedelta(seconds=1)


def test_recover_requeues_failed_deliveries_created_since_a_time_to_the_current_url(
    settings, receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_RETRY_SCHEDULE = []
    receiver.reply = lambda request: Reply(status=500) if request.path == "/old" else Reply()
    subscription = subscribe(receiver.url("/old"))
    old = delivery_of(publish("order.created", {"id": 1}))
    recent = delivery_of(publish("order.created", {"id": 2}))
    succeeded = delivery_of(publish("order.created", {"id": 3}))
    Delivery.objects.filter(pk=succeeded.pk).update(status=Status.SUCCEEDED, next_attempt_at=None)
    deliver_batch()
    since = timezone.now() - timedelta(hours=1)
    Delivery.objects.filter(pk=old.pk).update(created_at=since - timedelta(seconds=1))
    Subscription.objects.filter(pk=subscription.pk).update(url=receiver.url("/new"))
    subscription.refresh_from_db()

    assert actions.recover(subscription, since) == 1

    recent.refresh_from_db()
    assert recent.status == Status.PENDING
    assert recent.failures == 0
    assert recent.next_attempt_at <= timezone.now()
    assert deliver_batch() == 1
    recent.refresh_from_db()
    old.refresh_from_db()
    succeeded.refresh_from_db()
    assert recent.status == Status.SUCCEEDED
    assert old.status == Status.FAILED
    assert succeeded.status == Status.SUCCEEDED
    assert [r.path for r in receiver.requests] == ["/old", "/old", "/new"]
    assert lower(receiver.requests[-1].headers)["webhook-id"] == recent.event_id


# --- The private-address guard ---


def test_without_allowing_private_networks_a_loopback_endpoint_is_blocked_before_any_request(
    settings, receiver: Receiver, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    subscribe(receiver.url())
    delivery = delivery_of(publish("order.created", {"id": 1}))

    deliver_batch()

    [attempt] = attempts_of(delivery)
    assert (attempt.status_code, attempt.error, attempt.success) == (None, "blocked: private address", False)
    assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.status == Status.PENDING


# --- The drain's session ---


def show(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SHOW {name}")  # a constant name: SHOW takes no parameters
        return cursor.fetchone()[0]


@pytest.mark.parametrize("durable", [False, True], ids=["default", "worker-synchronous-commit"])
def test_a_drains_commits_skip_the_disk_flush_unless_configured_and_its_settings_end_with_it(
    settings, durable: bool
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("session settings are PostgreSQL's")
    settings.WEBHOOK_WORKER_SYNCHRONOUS_COMMIT = durable
    before = {name: show(name) for name in ("synchronous_commit", "enable_seqscan", "enable_bitmapscan")}

    with drain_session():
        assert show("synchronous_commit") == (before["synchronous_commit"] if durable else "off")
        assert (show("enable_seqscan"), show("enable_bitmapscan")) == ("off", "off")

    assert {name: show(name) for name in before} == before


# --- The database going away ---


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_sends_are_recorded_on_a_new_connection_when_postgresql_ends_the_session_meanwhile(
    receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> None:
    # Recorded on the old connection they would fail, and their leases would send them all again.
    from tests.test_ingest import end_other_sessions

    subscribe(receiver.url())
    events = [publish("order.created", {"id": n}) for n in range(3)]
    drain_pid = connection.connection.info.backend_pid  # the drain below runs on this thread's connection
    ended: list[int] = []
    once = threading.Lock()  # the receiver answers on several threads at once

    def end_the_drains_session(request) -> Reply:
        with once:
            if not ended:
                ended.extend(end_other_sessions(keep=None))
        return Reply()

    receiver.reply = end_the_drains_session

    assert drain(budget=5) == 3

    assert drain_pid in ended, "the drain's session must have ended while it was sending"
    assert len(receiver.requests) == 3
    for event in events:
        delivery = delivery_of(event)
        assert (delivery.status, delivery.attempt_count) == (Status.SUCCEEDED, 1)
        assert [attempt.success for attempt in attempts_of(delivery)] == [True]
    assert connection.connection.info.backend_pid != drain_pid


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_claim_after_postgresql_ended_the_session_claims_on_a_new_connection(
    subscribe: Callable[..., Subscription],
) -> None:
    from tests.test_ingest import end_other_sessions

    subscribe("https://hooks.example.com/a")
    events = {publish("order.created", {"id": n}).id for n in range(2)}
    ended_pid = connection.connection.info.backend_pid
    assert ended_pid in end_other_sessions(keep=None)  # threads of earlier tests may hold sessions too

    claimed = claim_deliveries(10)

    assert {delivery.event_id for delivery, _ in claimed} == events
    assert connection.connection.info.backend_pid != ended_pid
