"""publish(): fan-out by topic, tenant and state; validation; transactions; idempotency; model signals."""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from deliveries.actions import delete_subscription
from deliveries.models import Delivery, Status
from deliveries.wake import wake_after_publish
from subscriptions.models import Subscription, Tenant
from webhooks import correlation, publish
from webhooks.model_events import connect_all, default_serializer, tenant_of
from webhooks.models import Event
from webhooks.publishing import PublishError

pytestmark = pytest.mark.django_db
URL = "https://hooks.example.com/in"


def receivers_of(event: Event) -> set[str]:
    return set(Delivery.objects.filter(event=event).values_list("subscription_id", flat=True))


# --- Fan-out ---


def test_an_event_built_for_publishing_is_the_one_keyword_arguments_build(django_assert_num_queries) -> None:
    from webhooks.publishing import new_event

    tenant = Tenant.objects.create(slug="acme", name="Acme")
    fields = {"type": "order.created", "data": {"id": 1}, "tenant": tenant, "idempotency_scope": "s"}
    fields |= {"idempotency_key": None, "request_fingerprint": "f", "correlation_id": "c"}

    built, expected = new_event(fields), Event(**fields)

    ours = {f.attname: getattr(built, f.attname) for f in Event._meta.concrete_fields}
    theirs = {f.attname: getattr(expected, f.attname) for f in Event._meta.concrete_fields}
    assert ours | {"id": "-", "created_at": "-"} == theirs | {"id": "-", "created_at": "-"}
    assert built.id.startswith("evt_") and built.id != expected.id
    assert abs(built.created_at - expected.created_at) < timedelta(seconds=5) and built.created_at.tzinfo
    assert built._state.adding and built.pk
    with django_assert_num_queries(0):
        assert built.tenant is tenant
        assert new_event(fields | {"tenant": None}).tenant is None


@pytest.mark.postgresql
def test_the_tables_publish_writes_carry_no_like_copies_of_their_indexes() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN ('webhooks_event', 'deliveries_delivery')"
        )
        indexes = cursor.fetchall()

    assert [d for _, d in indexes if "pattern_ops" in d] == []
    event_columns = {d.rsplit("(", 1)[1].rstrip(")") for t, d in indexes if t == "webhooks_event"}
    assert {"id", "type", "tenant_id", "created_at"} <= event_columns  # the equality lookups keep theirs


@pytest.mark.postgresql
def test_the_array_literal_of_a_fan_out_reads_back_as_the_same_strings() -> None:
    from django.db import connection

    from deliveries.fanout import text_array

    values = ["sub_1", 'quote"d', "back\\slash", "a,b", "{braces}", " spaced ", "NULL", "", "ünï", '\\"']
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[]", [text_array(values)])
        assert cursor.fetchone()[0] == values
        cursor.execute("SELECT %s::text[]", [text_array([])])
        assert cursor.fetchone()[0] == []


def test_topic_patterns_decide_which_subscriptions_get_a_delivery(subscribe: Callable[..., Subscription]) -> None:
    order_star = subscribe(URL, ["order.*"])
    everything = subscribe(URL, ["#"])
    any_created = subscribe(URL, ["*.created"])
    order_deep = subscribe(URL, ["order.#"])
    invoices = subscribe(URL, ["invoice.paid"])

    created = publish("order.created", {"id": 1})
    shipped = publish("order.item.shipped", {"id": 1})
    paid = publish("invoice.paid", {"id": 2})

    assert receivers_of(created) == {order_star.id, everything.id, any_created.id, order_deep.id}
    assert receivers_of(shipped) == {everything.id, order_deep.id}
    assert receivers_of(paid) == {everything.id, invoices.id}
    assert created.delivery_count == 4


def test_each_delivery_starts_pending_due_at_once_with_the_event_type(subscribe: Callable[..., Subscription]) -> None:
    subscription = subscribe(URL, ["order.*"])

    event = publish("order.created", {"id": 1})

    delivery = Delivery.objects.get(event=event)
    assert delivery.subscription_id == subscription.id
    assert delivery.event_type == "order.created"
    assert delivery.status == Status.PENDING
    assert delivery.attempt_count == 0
    assert delivery.next_attempt_at <= timezone.now()
    assert Delivery.objects.due().filter(pk=delivery.pk).exists()


def test_inactive_and_soft_deleted_subscriptions_get_nothing(subscribe: Callable[..., Subscription]) -> None:
    active = subscribe(URL)
    subscribe(URL, is_active=False, disabled_reason="endpoint answered 410 Gone")
    delete_subscription(subscribe(URL))
    subscribe(URL, deleted_at=timezone.now())  # deleted, even if its active flag was never cleared

    event = publish("order.created", {"id": 1})

    assert receivers_of(event) == {active.id}
    assert event.delivery_count == 1


def test_an_event_of_a_tenant_reaches_only_that_tenants_subscriptions(
    subscribe: Callable[..., Subscription], acme: Tenant, globex: Tenant
) -> None:
    acme_hook = subscribe(URL, tenant=acme)
    subscribe(URL, tenant=globex)
    subscribe(URL)

    by_instance = publish("order.created", {"id": 1}, tenant=acme)
    by_slug = publish("order.created", {"id": 2}, tenant="acme")

    assert receivers_of(by_instance) == {acme_hook.id}
    assert receivers_of(by_slug) == {acme_hook.id}
    assert by_slug.tenant == acme


def test_an_event_without_a_tenant_reaches_only_subscriptions_without_a_tenant(
    subscribe: Callable[..., Subscription], acme: Tenant
) -> None:
    platform_hook = subscribe(URL)
    subscribe(URL, tenant=acme)

    event = publish("order.created", {"id": 1})

    assert event.tenant is None
    assert receivers_of(event) == {platform_hook.id}


def test_an_unknown_tenant_slug_is_refused_and_nothing_is_written(subscribe: Callable[..., Subscription]) -> None:
    subscribe(URL)

    with pytest.raises(PublishError, match="tenant"):
        publish("order.created", {"id": 1}, tenant="nobody")

    assert not Event.objects.exists()
    assert not Delivery.objects.exists()


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        "Order.created",
        "order..created",
        "order.",
        "order created",
        "order.*",
        "order.#",
        "#",
        "a" * 129,
        ".".join(["a"] * 11),
        "webhook.ping",
        "webhook.anything.else",
    ],
)
def test_an_invalid_or_reserved_event_type_is_refused_and_nothing_is_written(
    subscribe: Callable[..., Subscription], event_type: str
) -> None:
    subscribe(URL)

    with pytest.raises(PublishError):
        publish(event_type, {"id": 1})

    assert not Event.objects.exists()
    assert not Delivery.objects.exists()


@pytest.mark.parametrize("event_type", ["a" * 128, ".".join(["a"] * 10), "order_line-2.created", "webhooks.created"])
def test_event_types_at_the_limits_are_accepted(subscribe: Callable[..., Subscription], event_type: str) -> None:
    subscribe(URL)

    event = publish(event_type, {})

    assert event.type == event_type
    assert event.delivery_count == 1


@pytest.mark.parametrize("data", [[1, 2], "text", None, 3])
def test_data_that_is_not_a_json_object_is_refused(data: object) -> None:
    with pytest.raises(PublishError):
        publish("order.created", data)

    assert not Event.objects.exists()


# --- Transactions ---


def test_a_publish_in_a_rolled_back_transaction_leaves_no_event_delivery_or_wake_up(
    subscribe: Callable[..., Subscription], django_capture_on_commit_callbacks: Callable
) -> None:
    subscribe(URL)

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(RuntimeError), transaction.atomic():
        publish("order.created", {"id": 1})
        assert Delivery.objects.count() == 1
        raise RuntimeError("the caller's work failed")

    assert not Event.objects.exists()
    assert not Delivery.objects.exists()
    assert callbacks == []


def test_a_committed_publish_wakes_a_worker_only_on_commit(
    subscribe: Callable[..., Subscription], django_capture_on_commit_callbacks: Callable
) -> None:
    subscribe(URL)

    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        publish("order.created", {"id": 1})

    assert [callback for callback in callbacks if callback is wake_after_publish] == [wake_after_publish]


@pytest.mark.django_db(transaction=True)
def test_a_publish_outside_a_transaction_wakes_a_worker_after_its_rows_are_written(
    subscribe: Callable[..., Subscription], monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribe(URL)
    visible_at_wake: list[int] = []

    def wake() -> None:
        visible_at_wake.append(Delivery.objects.count())

    monkeypatch.setattr("webhooks.publishing.wake_after_publish", wake)
    monkeypatch.setattr("deliveries.fanout.wake_after_publish", wake)  # the path other databases take

    publish("order.created", {"id": 1})

    # A wake-up before the insert lets a drain claim, find nothing, and wait for the next ring.
    assert visible_at_wake == [1]


# --- Idempotency ---


def test_a_repeated_idempotency_key_returns_the_first_event_and_creates_nothing(
    subscribe: Callable[..., Subscription],
) -> None:
    subscribe(URL)
    subscribe(URL)

    first = publish("order.created", {"id": 1}, idempotency_key="order-1")
    again = publish("order.created", {"id": 1}, idempotency_key="order-1")

    assert first.replayed is False
    assert again.replayed is True
    assert again.id == first.id
    assert again.delivery_count == first.delivery_count == 2
    assert Event.objects.count() == 1
    assert Delivery.objects.count() == 2


def test_an_idempotency_key_is_scoped(subscribe: Callable[..., Subscription]) -> None:
    subscribe(URL)

    one = publish("order.created", {"id": 1}, idempotency_key="k", idempotency_scope="client-a")
    other = publish("order.created", {"id": 1}, idempotency_key="k", idempotency_scope="client-b")

    assert other.id != one.id
    assert other.replayed is False
    assert Delivery.objects.count() == 2


def test_an_idempotency_key_may_be_used_again_after_24_hours(subscribe: Callable[..., Subscription]) -> None:
    subscribe(URL)
    first = publish("order.created", {"id": 1}, idempotency_key="order-1")
    Event.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(hours=24, minutes=1))

    second = publish("order.created", {"id": 1}, idempotency_key="order-1")

    assert second.id != first.id
    assert second.replayed is False
    assert second.delivery_count == 1
    assert Event.objects.count() == 2
    assert publish("order.created", {"id": 1}, idempotency_key="order-1").id == second.id


def test_an_idempotency_key_just_inside_24_hours_still_replays(subscribe: Callable[..., Subscription]) -> None:
    subscribe(URL)
    first = publish("order.created", {"id": 1}, idempotency_key="order-1")
    Event.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(hours=23, minutes=59))

    again = publish("order.created", {"id": 1}, idempotency_key="order-1")

    assert again.id == first.id
    assert again.replayed is True
    assert Event.objects.count() == 1


# --- The event ---


def test_the_payload_has_id_type_timestamp_in_utc_with_z_and_data() -> None:
    event = publish("order.created", {"id": 1, "lines": [{"sku": "A", "qty": 2}]})
    stored = Event.objects.get(pk=event.pk)

    payload = stored.payload()

    assert set(payload) == {"id", "type", "timestamp", "data"}
    assert payload["id"] == event.id
    assert payload["type"] == "order.created"
    assert payload["data"] == {"id": 1, "lines": [{"sku": "A", "qty": 2}]}
    assert payload["timestamp"].endswith("Z")
    assert datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00")) == stored.created_at
    assert datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00")).utcoffset() == timedelta(0)


def test_the_payload_timestamp_is_utc_whatever_the_configured_time_zone(settings) -> None:
    settings.TIME_ZONE = "America/New_York"  # Django also points the process's local time there
    event = publish("order.created", {})

    with timezone.override("Asia/Tokyo"):
        stored = Event.objects.get(pk=event.pk)
        timestamp = stored.payload()["timestamp"]

    assert timestamp.endswith("Z")
    assert datetime.fromisoformat(timestamp.replace("Z", "+00:00")) == stored.created_at.astimezone(UTC)


def test_event_ids_are_opaque_strings_unique_per_event() -> None:
    ids = {publish("order.created", {}).id for _ in range(5)}

    assert len(ids) == 5
    assert all(isinstance(i, str) and i for i in ids)


def test_the_correlation_id_comes_from_the_current_request_or_code() -> None:
    token = correlation.current.set("req-42.abc")
    try:
        event = publish("order.created", {})
    finally:
        correlation.current.reset(token)

    assert Event.objects.get(pk=event.pk).correlation_id == "req-42.abc"


def test_without_a_current_correlation_id_each_event_gets_a_new_one() -> None:
    first = publish("order.created", {})
    second = publish("order.created", {})

    assert first.correlation_id
    assert second.correlation_id
    assert first.correlation_id != second.correlation_id


# --- Model signals (WEBHOOK_MODEL_EVENTS) ---


def test_creating_a_user_publishes_user_created_without_the_password() -> None:
    user = User.objects.create_user("alice", email="alice@example.com", password="correct horse battery")

    event = Event.objects.get(type="user.created")

    assert event.data["id"] == user.pk
    assert event.data["username"] == "alice"
    assert event.data["email"] == "alice@example.com"
    assert "password" not in event.data
    assert user.password not in str(event.data)
    assert event.tenant is None


def test_saving_a_user_publishes_user_updated() -> None:
    user = User.objects.create_user("alice")

    user.first_name = "Alice"
    user.save()

    event = Event.objects.get(type="user.updated")
    assert event.data["id"] == user.pk
    assert event.data["first_name"] == "Alice"


def test_deleting_a_user_publishes_user_deleted() -> None:
    user = User.objects.create_user("alice")
    user_id = user.pk

    user.delete()

    event = Event.objects.get(type="user.deleted")
    assert event.data["id"] == user_id
    assert event.data["username"] == "alice"


def test_a_user_event_is_delivered_to_subscriptions_that_match_it(subscribe: Callable[..., Subscription]) -> None:
    users = subscribe(URL, ["user.*"])
    subscribe(URL, ["order.*"])

    User.objects.create_user("alice")

    assert receivers_of(Event.objects.get(type="user.created")) == {users.id}


def endpoint_summary(subscription: Subscription) -> dict:
    """A custom serializer for the mapping below, named by dotted path."""
    return {"endpoint": subscription.id, "host": subscription.url.split("/")[2]}


CUSTOM_MAPPING = {
    "subscriptions.Subscription": {
        "created": "endpoint.created",
        "deleted": "endpoint.removed",
        "tenant_field": "tenant__slug",
        "serializer": "tests.test_publish.endpoint_summary",
    }
}


@pytest.fixture
def custom_model_events(settings) -> Iterator[None]:
    settings.WEBHOOK_MODEL_EVENTS = {**settings.WEBHOOK_MODEL_EVENTS, **CUSTOM_MAPPING}
    connect_all()
    yield
    for label in CUSTOM_MAPPING:
        model = apps.get_model(label)
        assert post_save.disconnect(sender=model, dispatch_uid=f"hookrelay-save-{label}")
        assert post_delete.disconnect(sender=model, dispatch_uid=f"hookrelay-delete-{label}")


def test_a_custom_mapping_publishes_with_its_serializer_within_the_instances_tenant(
    custom_model_events: None, subscribe: Callable[..., Subscription], acme: Tenant, globex: Tenant
) -> None:
    acme_listener = subscribe(URL, ["endpoint.*"], tenant=acme)
    subscribe(URL, ["endpoint.*"], tenant=globex)
    subscribe(URL, ["endpoint.*"])
    Event.objects.all().delete()

    created = Subscription.objects.create(url="https://acme.example.com/hook", events=["other"], tenant=acme)

    event = Event.objects.get(type="endpoint.created")
    assert event.data == {"endpoint": created.id, "host": "acme.example.com"}
    assert event.tenant == acme
    assert receivers_of(event) == {acme_listener.id}


def test_a_custom_mapping_without_a_tenant_on_the_instance_publishes_without_one(
    custom_model_events: None, subscribe: Callable[..., Subscription], acme: Tenant
) -> None:
    platform_listener = subscribe(URL, ["endpoint.*"])
    subscribe(URL, ["endpoint.*"], tenant=acme)
    Event.objects.all().delete()

    removed = subscribe("https://platform.example.com/hook", ["other"])
    removed_id = removed.id
    removed.delete()

    event = Event.objects.get(type="endpoint.removed")
    assert event.data == {"endpoint": removed_id, "host": "platform.example.com"}
    assert event.tenant is None
    assert receivers_of(event) == {platform_listener.id}


def test_tenant_of_follows_a_relation_path_to_a_tenant_or_a_slug(
    subscribe: Callable[..., Subscription], acme: Tenant
) -> None:
    tenanted = subscribe(URL, tenant=acme)
    untenanted = subscribe(URL)

    assert tenant_of(tenanted, "tenant") == acme
    assert tenant_of(tenanted, "tenant__slug") == "acme"
    assert tenant_of(untenanted, "tenant__slug") is None
    assert tenant_of(tenanted, None) is None


def test_the_default_serializer_leaves_out_credentials_and_is_json_ready(
    subscribe: Callable[..., Subscription],
) -> None:
    subscription = subscribe(URL)

    data = default_serializer(subscription)

    assert data["id"] == subscription.id
    assert data["url"] == URL
    assert isinstance(data["created_at"], str)
    assert "secret" not in data
    assert "previous_secret" not in data
    assert subscription.secret not in str(data)


def test_a_login_does_not_publish_user_updated(subscribe: Callable[..., Subscription], rf) -> None:
    from django.contrib.auth.models import User
    from django.contrib.auth.signals import user_logged_in

    subscribe(URL, ["user.*"])
    user = User.objects.create_user("bob", "bob@example.com", "pw")

    user_logged_in.send(sender=User, request=rf.get("/"), user=user)

    assert list(Event.objects.values_list("type", flat=True)) == ["user.created"]


def test_a_misspelt_tenant_field_fails_loudly() -> None:
    from webhooks.model_events import tenant_of

    class Thing:
        tenant = None

    assert tenant_of(Thing(), "tenant__slug") is None
    with pytest.raises(AttributeError):
        tenant_of(Thing(), "tenamt")


@pytest.mark.parametrize("data", [{"a": "nul\x00"}, {"a": ["lone \ud800"]}, {"key\x00": 1}])
def test_text_the_database_cannot_store_is_refused(data: dict) -> None:
    with pytest.raises(PublishError):
        publish("order.created", data)

    assert not Event.objects.exists()
