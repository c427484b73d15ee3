"""publish() picks receivers with precompiled SQL: the same subscriptions as Subscription.objects.receiving(),
and with the candidates it read last only while they are unchanged (webhooks/receivers.py)."""

from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers

from deliveries.models import Delivery
from subscriptions.models import Subscription, Tenant
from webhooks import publish
from webhooks.publishing import receiving
from webhooks.serializers import EventSerializer

pytestmark = pytest.mark.django_db
TYPES = ["order.created", "order.paid", "user.created", "a.b.c"]


@pytest.fixture
def world(acme: Tenant, globex: Tenant) -> list[Subscription]:
    made = []
    for tenant in (None, acme, globex):
        for patterns in (["order.*"], ["#"], ["user.created", "a.#"], ["nothing"]):
            made.append(Subscription.objects.create(url="https://x.example/", events=patterns, tenant=tenant))
    made.append(Subscription.objects.create(url="https://x.example/", events=["#"], tenant=acme, is_active=False))
    made.append(Subscription.objects.create(url="https://x.example/", events=["#"], deleted_at=timezone.now()))
    return made


@pytest.mark.parametrize("event_type", TYPES)
def test_it_picks_what_the_model_picks_for_every_tenant(world: list, acme: Tenant, globex: Tenant, event_type: str):
    for tenant in (None, acme, globex):
        assert receiving(event_type, tenant) == Subscription.objects.receiving(event_type, tenant)
        assert receiving(event_type, tenant), "every case should have receivers"


def test_a_subscription_created_just_now_receives_the_next_event(acme: Tenant) -> None:
    assert publish("order.created", {}, tenant=acme).delivery_count == 0
    Subscription.objects.create(url="https://x.example/", events=["order.*"], tenant=acme)

    assert publish("order.created", {}, tenant=acme).delivery_count == 1


CHANGES: dict[str, Callable[[Subscription, Tenant], dict]] = {
    "deactivated": lambda sub, other: {"is_active": False},
    "soft-deleted": lambda sub, other: {"deleted_at": timezone.now()},
    "given other patterns": lambda sub, other: {"events": ["user.*"]},
    "moved to another tenant": lambda sub, other: {"tenant": other},
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_subscription_changed_just_now_stops_receiving_with_the_next_event(
    acme: Tenant, globex: Tenant, change: str
) -> None:
    sub = Subscription.objects.create(url="https://x.example/", events=["order.*"], tenant=acme)
    assert publish("order.created", {}, tenant=acme).delivery_count == 1

    Subscription.objects.filter(pk=sub.pk).update(**CHANGES[change](sub, globex))
    event = publish("order.created", {}, tenant=acme)

    assert event.delivery_count == 0
    assert not Delivery.objects.filter(event=event).exists()


def test_a_subscription_given_a_matching_pattern_receives_the_next_event() -> None:
    sub = Subscription.objects.create(url="https://x.example/", events=["user.*"])
    assert publish("order.created", {}).delivery_count == 0

    Subscription.objects.filter(pk=sub.pk).update(events=["user.*", "order.created"])
    event = publish("order.created", {})

    assert list(Delivery.objects.filter(event=event).values_list("subscription_id", flat=True)) == [sub.pk]


def test_a_change_earlier_in_the_same_transaction_counts_for_the_publish(acme: Tenant) -> None:
    sub = Subscription.objects.create(url="https://x.example/", events=["order.*"], tenant=acme)
    publish("order.created", {}, tenant=acme)

    with transaction.atomic():
        Subscription.objects.filter(pk=sub.pk).update(is_active=False)
        added = Subscription.objects.create(url="https://x.example/", events=["#"], tenant=acme)
        event = publish("order.created", {}, tenant=acme)

    assert list(Delivery.objects.filter(event=event).values_list("subscription_id", flat=True)) == [added.pk]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement publish is PostgreSQL's")
def test_with_unchanged_subscriptions_a_publish_is_one_statement(acme: Tenant) -> None:
    Subscription.objects.create(url="https://x.example/", events=["order.*"], tenant=acme)
    publish("order.created", {}, tenant=acme)

    with CaptureQueriesContext(connection) as queries:
        event = publish("order.paid", {}, tenant=acme)

    assert len(queries) == 1, [q["sql"] for q in queries]
    assert event.delivery_count == Delivery.objects.filter(event=event).count() == 1


def test_the_event_body_is_what_the_declared_fields_give(acme: Tenant) -> None:
    for tenant in (None, acme):
        event = publish("order.created", {"n": 1}, tenant=tenant)
        serializer = EventSerializer(event)

        declared = serializers.ModelSerializer.to_representation(serializer, event)

        assert serializer.data == declared
        assert serializer.data["created_at"].endswith("Z")
