"""publish() picks receivers with precompiled SQL: the same subscriptions as Subscription.objects.receiving()."""

import pytest
from django.utils import timezone
from rest_framework import serializers

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


def test_the_event_body_is_what_the_declared_fields_give(acme: Tenant) -> None:
    for tenant in (None, acme):
        event = publish("order.created", {"n": 1}, tenant=tenant)
        serializer = EventSerializer(event)

        declared = serializers.ModelSerializer.to_representation(serializer, event)

        assert serializer.data == declared
        assert serializer.data["created_at"].endswith("Z")
