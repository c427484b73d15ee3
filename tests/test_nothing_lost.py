"""Nothing is lost and nothing is sent twice needlessly: killed workers, a wiped Redis, rollbacks, rivals."""

import json
import time
from collections import Counter

import pytest
from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from deliveries import wake
from deliveries.models import Delivery, Status
from subscriptions.models import Subscription
from tests.receiver import Receiver, Reply
from tests.test_engine_e2e import wait_until
from tests.test_ingest import end_other_sessions
from tests.test_wake import store
from webhooks import publish

pytestmark = pytest.mark.services


def claimed_but_unrecorded() -> int:
    """Deliveries whose current attempt was claimed by a worker and never recorded: the ones in flight."""
    return Delivery.objects.annotate(recorded=Count("attempts")).filter(attempt_count__gt=F("recorded")).count()


def test_a_killed_worker_and_a_wiped_redis_lose_no_delivery(start_worker, flush_redis, receiver: Receiver) -> None:
    receiver.reply = lambda request: Reply(delay=0.05)
    Subscription.objects.create(url=receiver.url(), events=["#"])
    settings = {"WEBHOOK_TIMEOUT": "1", "WEBHOOK_LEASE_MARGIN": "2", "WEBHOOK_BATCH_SIZE": "20"}
    first = start_worker(**settings)
    events = [publish("order.created", {"n": n}).id for n in range(300)]

    receiver.wait_for(60, timeout=60)
    first.kill()
    in_flight = claimed_but_unrecorded()
    flush_redis()
    start_worker(**settings)

    wait_until(lambda: len({r.headers["webhook-id"] for r in receiver.requests}) == len(events), timeout=90)
    received = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(received) == set(events)
    duplicates = sum(count - 1 for count in received.values())
    assert duplicates <= in_flight, (duplicates, in_flight)
    wait_until(lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == len(events))


def test_postgresql_ending_the_workers_sessions_mid_stream_loses_no_delivery(start_worker, receiver: Receiver) -> None:
    # A restart of PostgreSQL, a failover or an administrator ends every session mid-drain: claims and records
    # are made again on new connections, and rows a lost statement held come back when their leases end.
    receiver.reply = lambda request: Reply(delay=0.02)  # sends in flight when the sessions end
    Subscription.objects.create(url=receiver.url(), events=["#"])
    # Leases of 5 + 2 s: rows claimed by a drain that failed come back within seconds, and the receiver,
    # answering one request at a time, never takes a timeout's length (a failed attempt waits a minute).
    start_worker(WEBHOOK_TIMEOUT="5", WEBHOOK_LEASE_MARGIN="2", WEBHOOK_BATCH_SIZE="20")
    events = [publish("order.created", {"n": n}).id for n in range(200)]
    receiver.wait_for(40, timeout=60)

    assert end_other_sessions(), "the worker's sessions must have been ended"
    events += [publish("order.created", {"n": n}).id for n in range(200, 220)]

    wait_until(lambda: len({r.headers["webhook-id"] for r in receiver.requests}) == len(events), timeout=90)
    assert {r.headers["webhook-id"] for r in receiver.requests} == set(events)
    wait_until(lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == len(events), timeout=60)


def test_a_delivery_whose_subscription_row_is_gone_is_cancelled_and_the_stream_goes_on(
    start_worker, receiver: Receiver
) -> None:
    # Deliveries reference subscriptions without a foreign key (migration 0003); a row left by a publish that
    # raced a delete by hand must neither stop the drain nor come back with every lease.
    Subscription.objects.create(url=receiver.url(), events=["#"])
    start_worker()
    events = [publish("order.created", {"n": 0}).id]
    orphan = Delivery.objects.create(
        event_id=events[0], subscription_id="sub_gone", event_type="order.created", next_attempt_at=timezone.now()
    )
    events += [publish("order.created", {"n": n}).id for n in range(1, 30)]

    wait_until(lambda: len({r.headers["webhook-id"] for r in receiver.requests}) == len(events), timeout=60)
    wait_until(lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == len(events))
    wait_until(lambda: Delivery.objects.filter(pk=orphan.pk, status=Status.CANCELLED).exists())
    assert len(receiver.requests) == len(events)


def test_a_killed_listener_costs_latency_not_the_delivery(start_worker, flush_redis, receiver: Receiver) -> None:
    Subscription.objects.create(url=receiver.url(), events=["#"])
    first = start_worker()
    publish("order.created", {"n": 1})
    receiver.wait_for(1, timeout=30)
    # The drain that delivered it lingers as the listener: killed now, it leaves its key behind.
    wait_until(lambda: store().exists(wake.LISTENER_KEY), timeout=10)
    first.kill()
    start_worker()

    second = publish("order.created", {"n": 2})

    arrived = receiver.wait_for(2, timeout=60)
    assert arrived[-1].headers["webhook-id"] == second.id
    wait_until(lambda: Delivery.objects.filter(event_id=second.id, status=Status.SUCCEEDED).exists())


def test_a_rolled_back_transaction_delivers_nothing(start_worker, receiver: Receiver) -> None:
    start_worker()
    Subscription.objects.create(url=receiver.url(), events=["#"])

    with pytest.raises(RuntimeError), transaction.atomic():
        publish("order.created", {"kept": False})
        raise RuntimeError("the business transaction failed")
    publish("order.created", {"kept": True})

    receiver.wait_for(1)
    time.sleep(1.5)  # a sweep or two: the rolled-back event would have gone out by now
    assert [json.loads(r.body)["data"] for r in receiver.requests] == [{"kept": True}]
    assert Delivery.objects.count() == 1


def test_two_workers_never_send_the_same_attempt_twice(start_worker, receiver: Receiver) -> None:
    Subscription.objects.create(url=receiver.url(), events=["#"])
    small_batches = {"WEBHOOK_BATCH_SIZE": "5", "WEBHOOK_SEND_CONCURRENCY": "2"}
    one = start_worker(**small_batches)
    two = start_worker(beat=False, **small_batches)

    events = [publish("order.created", {"n": n}).id for n in range(400)]

    wait_until(lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == len(events), timeout=90)
    sent = Counter((r.headers["webhook-id"], r.headers["X-Webhook-Attempt"]) for r in receiver.requests)
    assert sorted(event for event, _ in sent) == sorted(events)
    assert max(sent.values()) == 1
    per_delivery = Delivery.objects.annotate(n=Count("attempts")).values_list("n", flat=True)
    assert set(per_delivery) == {1}
    assert "outcome=success" in one.output() and "outcome=success" in two.output()
