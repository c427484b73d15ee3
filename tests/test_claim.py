"""Claiming due deliveries: a lease, a limit, and no row handed to two claimers."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deliveries.models import Delivery
from deliveries.worker import claim, claim_deliveries, lease_seconds
from subscriptions.models import Subscription
from webhooks.models import Event


def make_pending(count: int, due_in: timedelta = timedelta(0)) -> list[str]:
    subscription = Subscription.objects.create(url="https://example.com/hook", events=["#"])
    event = Event.objects.create(type="order.created", data={})
    rows = [
        Delivery(event=event, subscription=subscription, event_type=event.type, next_attempt_at=timezone.now() + due_in)
        for _ in range(count)
    ]
    return [row.id for row in Delivery.objects.bulk_create(rows)]


@pytest.mark.django_db
def test_a_claim_takes_at_most_its_limit_and_each_row_once() -> None:
    ids = make_pending(300)

    batches = [claim(20) for _ in range(16)]

    assert [len(batch) for batch in batches] == [20] * 15 + [0]
    claimed = [pk for batch in batches for pk in batch]
    assert sorted(claimed) == sorted(ids)
    assert {number for batch in batches for number in batch.values()} == {1}


@pytest.mark.django_db
def test_a_claimed_row_is_leased_and_not_due_until_the_lease_ends() -> None:
    make_pending(3)
    before = timezone.now()

    claimed = claim(10)

    assert len(claimed) == 3
    leased = Delivery.objects.filter(id__in=claimed)
    assert all(d.next_attempt_at >= before + timedelta(seconds=lease_seconds() - 1) for d in leased)
    assert all(d.attempt_count == 1 for d in leased)
    assert claim(10) == {}


@pytest.mark.django_db
def test_rows_not_yet_due_are_not_claimed() -> None:
    make_pending(2, due_in=timedelta(minutes=5))

    assert claim(10) == {}


@pytest.mark.services
def test_concurrent_claimers_on_postgresql_never_share_a_row(transactional_db) -> None:
    ids = make_pending(400)
    results: list[dict[str, int]] = []
    lock = threading.Lock()

    def claimer() -> None:
        try:
            while batch := claim(7):
                with lock:
                    results.append(batch)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    claimed = [pk for batch in results for pk in batch]
    assert sorted(claimed) == sorted(ids)
    assert max(len(batch) for batch in results) <= 7


@pytest.mark.django_db
def test_a_claim_skips_the_subscriptions_it_is_told_to() -> None:
    # The slow lane: no new rows for a subscription that already has its share of slow sends in flight.
    busy = make_pending(3)
    other = make_pending(2)
    busy_subscription = Delivery.objects.get(pk=busy[0]).subscription_id

    claimed = claim(10, exclude={busy_subscription})

    assert sorted(claimed) == sorted(other)
    assert sorted(claim(10)) == sorted(busy)


@pytest.mark.django_db
def test_a_claim_for_one_subscription_takes_only_its_rows() -> None:
    # The slow lane tops a slow subscription up with only the rows it has room for.
    mine = make_pending(3)
    make_pending(2)
    subscription = Delivery.objects.get(pk=mine[0]).subscription_id

    claimed = claim(2, only=subscription)

    assert len(claimed) == 2
    assert set(claimed) <= set(mine)


@pytest.mark.django_db
def test_claim_deliveries_loads_each_row_with_its_event_and_subscription_in_one_query() -> None:
    subscription = Subscription.objects.create(url="https://example.com/hook", events=["#"])
    event = Event.objects.create(type="order.created", data={"total": 12, "items": ["a"]})
    rows = Delivery.objects.bulk_create(
        Delivery(event=event, subscription=subscription, event_type=event.type, next_attempt_at=timezone.now())
        for _ in range(3)
    )

    with CaptureQueriesContext(connection) as queries:
        claimed = claim_deliveries(10)
        loaded = [
            (d.id, n, d.event.data, d.event.created_at, d.subscription.url, d.subscription.secret) for d, n in claimed
        ]

    reads = [q["sql"] for q in queries.captured_queries if "deliveries_delivery" in q["sql"]]
    assert len(reads) == (1 if connection.vendor == "postgresql" else 2), reads
    assert sorted(row[0] for row in loaded) == sorted(row.id for row in rows)
    for row in loaded:
        assert row[1:] == (1, {"total": 12, "items": ["a"]}, event.created_at, subscription.url, subscription.secret)
    assert all(d.attempt_count == 1 and d.next_attempt_at > timezone.now() for d, _ in claimed)


@pytest.mark.django_db
def test_claim_deliveries_loads_every_field_as_the_orm_reads_it() -> None:
    now = timezone.now()
    subscription = Subscription.objects.create(
        url="https://example.com/hook?x=1",
        events=["order.*", "#"],
        description="field check",
        previous_secret="whsec_old",
        previous_secret_expires_at=now + timedelta(hours=1),
        last_success_at=now - timedelta(minutes=5),
        consecutive_failures=2,
    )
    event = Event.objects.create(type="order.created", data={"n": 1.5, "s": "é", "l": [None, True]}, correlation_id="c")
    Delivery.objects.create(
        event=event,
        subscription=subscription,
        event_type=event.type,
        next_attempt_at=now,
        failures=1,
        last_error="timeout",
        last_status_code=503,
    )

    ((delivery, _),) = claim_deliveries(10)

    for loaded, model in ((delivery, Delivery), (delivery.event, Event), (delivery.subscription, Subscription)):
        stored = model.objects.get(pk=loaded.pk)
        for field in model._meta.concrete_fields:
            assert getattr(loaded, field.attname) == getattr(stored, field.attname), field.name
    assert delivery.subscription.previous_secret_expires_at.tzinfo is not None
    assert delivery.subscription.signing_secrets() == stored.signing_secrets()
