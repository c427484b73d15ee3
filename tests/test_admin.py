"""The operators' console: bounded queries on every page, actions through the real workflows, the dashboard."""

import html
import json
import re
from datetime import UTC, datetime, timedelta
from datetime import timezone as fixed_offset

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import quote, unquote
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import Application

from deliveries import dashboard
from deliveries.admin_display import absolute_time, relative_time, time_html
from deliveries.models import Attempt, Delivery, Status
from deliveries.worker import deliver_batch
from subscriptions.models import ApiClient, Subscription, Tenant
from tests.conftest import reply_sequence
from tests.receiver import Receiver, Reply
from webhooks import publish
from webhooks.models import Event
from webhooks.ping import PING_TYPE

ROWS = 100
ATTEMPTS = 50
DELIVERIES_URL = "/admin/deliveries/delivery/"
SUBSCRIPTIONS_URL = "/admin/subscriptions/subscription/"


def texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def run_action(client: Client, url: str, action: str, objects: list, **data) -> object:
    return client.post(url, {"action": action, "_selected_action": [o.pk for o in objects], **data}, follow=True)


def make_delivery(subscription: Subscription, status: str, created_at: datetime | None = None, **fields) -> Delivery:
    event = Event.objects.create(type="order.created", data={"id": 1}, tenant=subscription.tenant)
    return Delivery.objects.create(
        event=event,
        subscription=subscription,
        event_type=event.type,
        status=status,
        created_at=created_at or timezone.now(),
        **fields,
    )


# --- Bounded queries: 100 rows per changelist, 50 attempts (or deliveries) per change page ---


@pytest.fixture
def many_rows(db) -> dict[str, str]:
    """100 of everything the admin lists; returns the ids the change pages open, quoted for admin URLs."""
    now = timezone.now()
    tenants = Tenant.objects.bulk_create(Tenant(slug=f"tenant-{i}") for i in range(ROWS))
    subscriptions = Subscription.objects.bulk_create(
        Subscription(
            url=f"https://hooks{i}.example.com/in?token=t{i}",
            events=["order.*", "invoice.#"],
            tenant=tenants[i],
            is_active=i % 3 != 0,
            disabled_reason=None if i % 3 else "5 consecutive failed deliveries",
            last_success_at=now if i % 2 else None,
        )
        for i in range(ROWS)
    )
    events = Event.objects.bulk_create(
        Event(type=f"order.e{i % 7}", data={"n": i}, tenant=tenants[i], idempotency_key=f"k{i}") for i in range(ROWS)
    )
    statuses = Status.values
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            event=events[i],
            subscription=subscriptions[i],
            event_type=events[i].type,
            status=statuses[i % 4],
            attempt_count=1,
            next_attempt_at=now + timedelta(minutes=i) if statuses[i % 4] == Status.PENDING else None,
            completed_at=None if statuses[i % 4] == Status.PENDING else now,
            failures=1,
            last_status_code=500,
        )
        for i in range(ROWS)
    )
    Attempt.objects.bulk_create(
        Attempt(delivery=d, number=1, started_at=now, status_code=500, error="HTTP 500") for d in deliveries
    )
    busy = deliveries[0]
    Attempt.objects.bulk_create(
        Attempt(delivery=busy, number=n, started_at=now, status_code=500, error="HTTP 500", response_body="down " * 50)
        for n in range(2, ATTEMPTS + 1)
    )
    # One event fanned out to 50 subscriptions.
    Delivery.objects.bulk_create(
        Delivery(event=events[1], subscription=s, event_type=events[1].type) for s in subscriptions[:ATTEMPTS]
    )
    applications = Application.objects.bulk_create(
        Application(
            name=f"client {i}",
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
            client_secret="unused",
        )
        for i in range(ROWS)
    )
    ApiClient.objects.bulk_create(
        ApiClient(application=a, tenant=tenants[i], scopes="events.publish") for i, a in enumerate(applications)
    )
    ids = {
        "subscription": subscriptions[0].pk,
        "tenant": tenants[0].pk,
        "event": events[1].pk,
        "delivery": busy.pk,
        "attempt": busy.attempts.first().pk,
        "apiclient": ApiClient.objects.first().pk,
    }
    return {kind: quote(pk) for kind, pk in ids.items()}


# Measured (the same on SQLite and PostgreSQL): session and user are 2 of each; the rest is the page's own.
CHANGELISTS = [
    ("/admin/subscriptions/subscription/", 6),  # count, rows with tenants, tenant filter, action log
    ("/admin/subscriptions/tenant/", 5),
    ("/admin/subscriptions/apiclient/", 6),
    ("/admin/webhooks/event/", 6),  # rows with delivery counts by status as subqueries, not per row
    ("/admin/deliveries/delivery/", 6),
    ("/admin/deliveries/attempt/", 4),
    ("/admin/deliveries/delivery/?status__exact=failed&q=evt", 6),
    ("/admin/subscriptions/subscription/?state=disabled&q=hooks1", 6),
    ("/admin/dashboard/", 7),
    ("/admin/", 3),
]
CHANGE_PAGES = [
    ("subscription", "/admin/subscriptions/subscription/{}/change/", 4),
    ("tenant", "/admin/subscriptions/tenant/{}/change/", 4),
    ("event", "/admin/webhooks/event/{}/change/", 5),  # with 50 deliveries inline
    ("delivery", "/admin/deliveries/delivery/{}/change/", 6),  # with 50 attempts inline
    ("attempt", "/admin/deliveries/attempt/{}/change/", 5),
    ("apiclient", "/admin/subscriptions/apiclient/{}/change/", 6),
]


@pytest.mark.parametrize(("url", "bound"), CHANGELISTS)
def test_each_list_page_runs_a_fixed_number_of_queries_for_100_rows(
    operator: Client, many_rows: dict[str, str], django_assert_max_num_queries, url: str, bound: int
) -> None:
    with django_assert_max_num_queries(bound):
        response = operator.get(url)

    assert response.status_code == 200


@pytest.mark.parametrize(("kind", "url", "bound"), CHANGE_PAGES)
def test_each_change_page_runs_a_fixed_number_of_queries_with_50_inline_rows(
    operator: Client, many_rows: dict[str, str], django_assert_max_num_queries, kind: str, url: str, bound: int
) -> None:
    with django_assert_max_num_queries(bound):
        response = operator.get(url.format(many_rows[kind]))

    assert response.status_code == 200


def test_the_lists_show_what_an_operator_looks_for(operator: Client, many_rows: dict[str, str]) -> None:
    deliveries = operator.get(DELIVERIES_URL).content.decode()
    subscriptions = operator.get(SUBSCRIPTIONS_URL).content.decode()
    events = operator.get("/admin/webhooks/event/").content.decode()

    assert len(re.findall(r'class="action-select"', deliveries)) == ROWS
    assert "hr-status-failed" in deliveries and "hr-status-succeeded" in deliveries
    # The next attempt: the absolute time with its zone, and how soon it is.
    assert re.search(r'<td class="field-next_attempt"><span class="hr-time"><time datetime="[^"]+Z">'
                     r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time> <span class="hr-ago">in \d+ min( \d+ s)?</span>',
                     deliveries)  # fmt: skip
    # The URL without its query (it may hold a token), cut to its column, whole in the title.
    assert 'title="https://hooks1.example.com/in">https://hooks1.example.com/in</span></a></th>' in subscriptions
    assert "order.*, invoice.#" in subscriptions
    assert "5 consecutive failed deliveries" in subscriptions
    # The fanned-out event counts its 50 pending deliveries and its own one, by status.
    assert re.search(r"50&nbsp;<span[^>]*>pending</span>", events)


# --- Times: one absolute format with its zone, and how far from now ---

NOW = datetime(2026, 12, 8, 14, 3, 21, tzinfo=UTC)
ABSOLUTE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (timedelta(0), "now"),
        (timedelta(milliseconds=900), "now"),
        (timedelta(milliseconds=-900), "now"),
        (timedelta(seconds=1), "in 1 s"),
        (timedelta(seconds=40), "in 40 s"),
        (timedelta(seconds=-40), "40 s ago"),
        (timedelta(seconds=59.9), "in 59 s"),
        (timedelta(minutes=5), "in 5 min"),
        (timedelta(minutes=-5), "5 min ago"),
        (timedelta(seconds=299.6), "in 4 min 59 s"),
        (timedelta(hours=-3), "3 h ago"),
        (timedelta(hours=3, minutes=12, seconds=40), "in 3 h 12 min"),
        (timedelta(days=2, hours=3), "in 2 d 3 h"),
        (timedelta(days=-400, seconds=-5), "400 d ago"),
    ],
)
def test_relative_times_say_how_far_in_the_largest_units(offset: timedelta, text: str) -> None:
    assert relative_time(NOW + offset, NOW) == text


def test_absolute_times_are_in_utc_and_say_so() -> None:
    paris = NOW.astimezone(fixed_offset(timedelta(hours=1)))

    assert absolute_time(paris) == "2026-12-08 14:03:21 UTC"


def test_a_time_shows_the_absolute_time_with_the_relative_one_beside_it() -> None:
    html_text = time_html(NOW - timedelta(seconds=40), NOW)

    assert html_text == (
        '<span class="hr-time"><time datetime="2026-12-08T14:02:41Z">2026-12-08 14:02:41 UTC</time> '
        '<span class="hr-ago">40 s ago</span></span>'
    )
    assert time_html(None) == "—"


def test_every_admin_page_shows_times_in_one_format_with_the_zone(
    operator: Client, many_rows: dict[str, str], subscribe
) -> None:
    platform = make_delivery(subscribe("https://platform.example.com/in"), Status.FAILED, completed_at=timezone.now())
    pages = [
        DELIVERIES_URL,
        f"{DELIVERIES_URL}{many_rows['delivery']}/change/",
        f"{DELIVERIES_URL}{quote(platform.pk)}/change/",
        SUBSCRIPTIONS_URL,
        f"{SUBSCRIPTIONS_URL}{many_rows['subscription']}/change/",
        "/admin/webhooks/event/",
        f"/admin/webhooks/event/{many_rows['event']}/change/",
        "/admin/deliveries/attempt/",
        f"/admin/deliveries/attempt/{many_rows['attempt']}/change/",
        "/admin/subscriptions/tenant/",
        f"/admin/subscriptions/tenant/{many_rows['tenant']}/change/",
        "/admin/subscriptions/apiclient/",
        "/admin/dashboard/",
    ]
    for url in pages:
        page = operator.get(url).content.decode()
        assert ABSOLUTE.search(page), f"{url} shows no time"
        assert not re.search(r"[ap]\.m\.|\xa0(minute|hour|day)", page), f"{url} shows a time in another format"
        assert ">None<" not in page, f"{url} shows None for no value"


# --- Wording: the site's name, plurals ---


def test_the_admin_is_called_hookrelay(operator: Client) -> None:
    page = operator.get("/admin/").content.decode()

    assert '<div id="site-name"><a href="/admin/">Hookrelay</a></div>' in page
    assert "<title>Hookrelay administration | Hookrelay</title>" in page
    assert "<h1>Hookrelay administration</h1>" in page
    assert "Django administration" not in page and "Django site admin" not in page


def test_the_lists_leave_the_width_to_the_table(operator: Client) -> None:
    page = operator.get(DELIVERIES_URL).content.decode()

    assert 'id="nav-sidebar"' not in page
    assert "hookrelay/admin.css" in page


def test_action_messages_count_in_the_singular_and_the_plural(operator: Client, subscribe) -> None:
    one = subscribe("https://one.example.com/in")
    two = [subscribe(f"https://two-{n}.example.com/in") for n in range(2)]
    for subscription in two:
        make_delivery(subscription, Status.PENDING, next_attempt_at=timezone.now())

    assert texts(run_action(operator, SUBSCRIPTIONS_URL, "disable", [one])) == [
        "Disabled 1 subscription; 0 pending deliveries failed."
    ]
    assert texts(run_action(operator, SUBSCRIPTIONS_URL, "disable", two)) == [
        "Disabled 2 subscriptions; 2 pending deliveries failed."
    ]
    assert texts(run_action(operator, SUBSCRIPTIONS_URL, "enable", [one])) == ["Re-enabled 1 subscription."]
    assert texts(run_action(operator, SUBSCRIPTIONS_URL, "enable", two)) == ["Re-enabled 2 subscriptions."]
    [rotated] = texts(run_action(operator, SUBSCRIPTIONS_URL, "rotate_secret", [one]))
    assert rotated.startswith("Rotated the secret of 1 subscription; the previous secret keeps signing for 24 hours.")
    failed = list(Delivery.objects.filter(subscription__in=two))
    assert texts(run_action(operator, DELIVERIES_URL, "redeliver_now", failed)) == [
        "Queued 2 deliveries for redelivery now."
    ]
    assert texts(run_action(operator, DELIVERIES_URL, "cancel", failed)) == ["Cancelled 2 pending deliveries."]
    deleted = texts(run_action(operator, SUBSCRIPTIONS_URL, "delete_keeping_history", [one], apply="Delete"))
    assert deleted == ["Deleted 1 subscription; 0 pending deliveries cancelled."]
    skipped = texts(run_action(operator, SUBSCRIPTIONS_URL, "enable", [one]))
    assert skipped == [f"Skipped a deleted subscription: {one.pk}", "Re-enabled 0 subscriptions."]


# --- Pages show history read-only ---


def test_the_delivery_page_lists_attempts_newest_first_with_the_response(
    operator: Client, many_rows: dict[str, str]
) -> None:
    page = operator.get(f"{DELIVERIES_URL}{many_rows['delivery']}/change/").content.decode()

    numbers = [int(n) for n in re.findall(r'<td class="field-number">\s*<p>(\d+)</p>', page)]
    assert numbers == list(range(ATTEMPTS, 0, -1))
    assert "down down down" in page
    assert 'id="redeliver-now"' in page
    assert 'name="_save"' not in page  # nothing to edit


def test_history_cannot_be_edited(operator: Client, many_rows: dict[str, str]) -> None:
    delivery = Delivery.objects.get(pk=unquote(many_rows["delivery"]))

    assert operator.post(f"{DELIVERIES_URL}{many_rows['delivery']}/change/", {"status": "x"}).status_code == 403
    assert operator.post(f"/admin/webhooks/event/{many_rows['event']}/change/", {"type": "x"}).status_code == 403
    assert operator.post(f"/admin/deliveries/attempt/{many_rows['attempt']}/change/", {}).status_code == 403
    assert operator.get(f"{DELIVERIES_URL}{many_rows['delivery']}/delete/").status_code == 403
    assert operator.get("/admin/webhooks/event/add/").status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == Status.PENDING


def test_the_event_page_shows_the_payload_as_formatted_json_and_its_deliveries(operator: Client, subscribe) -> None:
    subscribe("https://hooks.example.com/in")
    event = publish("order.created", {"id": 42, "lines": [{"sku": "A-1", "qty": 2}]})

    page = operator.get(f"/admin/webhooks/event/{quote(event.pk)}/change/").content.decode()

    assert html.escape(json.dumps(event.payload(), indent=2, sort_keys=True)) in page
    assert Delivery.objects.get(event=event).pk in page
    assert "https://hooks.example.com/in" in page


def test_events_and_deliveries_are_found_by_event_id(operator: Client, subscribe) -> None:
    subscribe("https://hooks.example.com/in")
    event = publish("order.created", {"id": 1}, idempotency_key="order-1")
    other = publish("order.created", {"id": 2})
    delivery = Delivery.objects.get(event=event)

    found = operator.get(DELIVERIES_URL, {"q": event.pk}).content.decode()
    by_key = operator.get("/admin/webhooks/event/", {"q": "order-1"}).content.decode()

    assert delivery.pk in found and Delivery.objects.get(event=other).pk not in found
    assert event.pk in by_key and other.pk not in by_key


# --- Delivery actions ---


@pytest.fixture
def failed_delivery(receiver: Receiver, allow_loopback, settings, subscribe) -> Delivery:
    """A real delivery that failed for good: the receiver answered 500 and the schedule has no retries."""
    settings.WEBHOOK_RETRY_SCHEDULE = []
    receiver.reply = reply_sequence(Reply(500, b"down"), Reply(200, b"back up"))
    subscribe(receiver.url())
    event = publish("order.created", {"id": 7})
    assert deliver_batch() == 1
    delivery = Delivery.objects.get(event=event)
    assert delivery.status == Status.FAILED
    return delivery


def test_redeliver_now_sends_a_new_attempt_with_the_same_webhook_id(
    operator: Client, receiver: Receiver, failed_delivery: Delivery
) -> None:
    response = run_action(operator, DELIVERIES_URL, "redeliver_now", [failed_delivery])

    assert "Queued 1 delivery for redelivery now." in texts(response)
    assert deliver_batch() == 1
    failed_delivery.refresh_from_db()
    assert failed_delivery.status == Status.SUCCEEDED
    assert list(failed_delivery.attempts.values_list("number", "success")) == [(2, True), (1, False)]
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == failed_delivery.event_id
    assert second.headers["X-Webhook-Attempt"] == "2"


def test_the_redeliver_button_on_the_delivery_page_requeues_it(
    operator: Client, receiver: Receiver, failed_delivery: Delivery
) -> None:
    page = f"{DELIVERIES_URL}{quote(failed_delivery.pk)}/change/"
    button = re.search(r'<form method="post" action="([^"]+)">', operator.get(page).content.decode()).group(1)

    assert button == f"{DELIVERIES_URL}{quote(failed_delivery.pk)}/redeliver/"
    assert operator.get(button).status_code == 405
    response = operator.post(button)

    assert response.status_code == 302 and response["Location"] == page
    failed_delivery.refresh_from_db()
    assert (failed_delivery.status, failed_delivery.failures) == (Status.PENDING, 0)
    assert deliver_batch() == 1
    assert "back up" in operator.get(page).content.decode()
    assert LogEntry.objects.filter(object_id=failed_delivery.pk, change_message="Redelivered now").exists()


def test_redeliver_refuses_a_delivery_of_a_disabled_subscription(operator: Client, failed_delivery: Delivery) -> None:
    Subscription.objects.filter(pk=failed_delivery.subscription_id).update(is_active=False)

    response = run_action(operator, DELIVERIES_URL, "redeliver_now", [failed_delivery])

    assert any("subscription inactive or deleted" in t for t in texts(response))
    failed_delivery.refresh_from_db()
    assert failed_delivery.status == Status.FAILED


def test_cancel_stops_a_pending_delivery(
    operator: Client, receiver: Receiver, allow_loopback, subscribe, failed_delivery: Delivery
) -> None:
    pending = Delivery.objects.get(event=publish("order.created", {"id": 8}))
    sent_before = len(receiver.requests)

    response = run_action(operator, DELIVERIES_URL, "cancel", [pending, failed_delivery])

    assert "Cancelled 1 pending delivery." in texts(response)
    assert f"Not cancelled, not pending: {failed_delivery.pk}" in texts(response)
    pending.refresh_from_db()
    assert (pending.status, pending.next_attempt_at) == (Status.CANCELLED, None)
    assert deliver_batch() == 0
    assert len(receiver.requests) == sent_before


# --- Subscription actions ---


def test_ping_shows_its_outcome_and_records_it(operator: Client, receiver: Receiver, allow_loopback, subscribe) -> None:
    receiver.reply = lambda request: Reply(200, b"pong")
    subscription = subscribe(receiver.url())

    response = run_action(operator, SUBSCRIPTIONS_URL, "send_ping", [subscription])

    [message] = texts(response)
    assert re.fullmatch(
        rf"Ping to {subscription.pk} \(http://127.0.0.1:\d+/hook\): HTTP 200 in \d+ ms, response: pong", message
    )
    ping = Delivery.objects.get(subscription=subscription, event_type=PING_TYPE)
    assert ping.status == Status.SUCCEEDED
    assert list(ping.attempts.values_list("status_code", "response_body")) == [(200, "pong")]
    assert receiver.requests[0].headers["X-Webhook-Event"] == PING_TYPE


def test_a_failed_ping_is_shown_as_an_error_and_changes_nothing(
    operator: Client, receiver: Receiver, allow_loopback, subscribe
) -> None:
    receiver.reply = lambda request: Reply(503, b"maintenance")
    subscription = subscribe(receiver.url())

    response = run_action(operator, SUBSCRIPTIONS_URL, "send_ping", [subscription])

    [message] = list(get_messages(response.wsgi_request))
    assert message.level_tag == "error" and "HTTP 503" in str(message) and "maintenance" in str(message)
    assert Delivery.objects.get(subscription=subscription).status == Status.FAILED
    subscription.refresh_from_db()
    assert (subscription.is_active, subscription.consecutive_failures) == (True, 0)


def test_disable_fails_pending_deliveries_and_enable_brings_it_back(operator: Client, subscribe) -> None:
    subscription = subscribe("https://hooks.example.com/in")
    pending = make_delivery(subscription, Status.PENDING, next_attempt_at=timezone.now())

    response = run_action(operator, SUBSCRIPTIONS_URL, "disable", [subscription])

    assert "Disabled 1 subscription; 1 pending delivery failed." in texts(response)
    subscription.refresh_from_db()
    pending.refresh_from_db()
    assert (subscription.is_active, subscription.disabled_reason) == (False, "disabled in the admin by ops")
    assert (pending.status, pending.last_error) == (Status.FAILED, "subscription disabled")

    Subscription.objects.filter(pk=subscription.pk).update(consecutive_failures=3)
    run_action(operator, SUBSCRIPTIONS_URL, "enable", [subscription])

    subscription.refresh_from_db()
    assert (subscription.is_active, subscription.disabled_reason, subscription.consecutive_failures) == (True, None, 0)
    messages = list(LogEntry.objects.filter(object_id=subscription.pk).values_list("change_message", flat=True))
    assert messages == ["Re-enabled in the admin", "Disabled in the admin"]


def test_rotate_secret_keeps_the_old_one_signing(operator: Client, subscribe) -> None:
    subscription = subscribe("https://hooks.example.com/in")
    old = subscription.secret

    run_action(operator, SUBSCRIPTIONS_URL, "rotate_secret", [subscription])

    subscription.refresh_from_db()
    assert subscription.secret != old and subscription.secret.startswith("whsec_")
    assert subscription.signing_secrets() == [subscription.secret, old]


def test_recover_asks_for_a_date_then_requeues_failed_deliveries_since_then(
    operator: Client, receiver: Receiver, allow_loopback, subscribe
) -> None:
    subscription = subscribe(receiver.url())
    now = timezone.now()
    old = make_delivery(subscription, Status.FAILED, now - timedelta(days=3), failures=6)
    recent = [make_delivery(subscription, Status.FAILED, now - timedelta(hours=h), failures=6) for h in (1, 2)]

    form = run_action(operator, SUBSCRIPTIONS_URL, "recover_failed", [subscription])
    assert form.templates[0].name == "admin/subscriptions/subscription/action_form.html"
    assert 'type="datetime-local"' in form.content.decode()
    since = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = run_action(operator, SUBSCRIPTIONS_URL, "recover_failed", [subscription], since=since, apply="Recover")

    assert "Re-queued 2 failed deliveries of 1 subscription." in texts(response)
    for delivery in recent:
        delivery.refresh_from_db()
        assert (delivery.status, delivery.failures) == (Status.PENDING, 0)
    old.refresh_from_db()
    assert old.status == Status.FAILED
    assert deliver_batch() == 2
    assert {r.headers["webhook-id"] for r in receiver.wait_for(2)} == {d.event_id for d in recent}


def test_recover_skips_a_disabled_subscription(operator: Client, subscribe) -> None:
    subscription = subscribe("https://hooks.example.com/in", is_active=False)
    failed = make_delivery(subscription, Status.FAILED)

    response = run_action(
        operator, SUBSCRIPTIONS_URL, "recover_failed", [subscription], since="2000-01-01T00:00", apply="Recover"
    )

    assert f"Not recovered, re-enable first: {subscription.pk}" in texts(response)
    failed.refresh_from_db()
    assert failed.status == Status.FAILED


def test_delete_keeps_the_delivery_history(operator: Client, subscribe) -> None:
    subscription = subscribe("https://hooks.example.com/in")
    done = make_delivery(subscription, Status.SUCCEEDED)
    pending = make_delivery(subscription, Status.PENDING, next_attempt_at=timezone.now())

    confirm = run_action(operator, SUBSCRIPTIONS_URL, "delete_keeping_history", [subscription])
    assert "history stays" in confirm.content.decode()
    run_action(operator, SUBSCRIPTIONS_URL, "delete_keeping_history", [subscription], apply="Delete")

    subscription.refresh_from_db()
    assert subscription.is_deleted
    assert Delivery.objects.get(pk=done.pk).status == Status.SUCCEEDED
    assert Delivery.objects.get(pk=pending.pk).status == Status.CANCELLED
    assert operator.get(f"{SUBSCRIPTIONS_URL}{quote(subscription.pk)}/delete/").status_code == 403


def test_the_subscription_form_validates_like_the_api(operator: Client, acme: Tenant) -> None:
    def add(url: str, events: str) -> object:
        data = {"url": url, "events": events, "description": "", "tenant": acme.pk}
        return operator.post(f"{SUBSCRIPTIONS_URL}add/", data)

    private = add("http://127.0.0.1:9/hook", '["order.*"]')
    bad_pattern = add("https://hooks.example.com/in", '["Order.*"]')
    good = add("https://hooks.example.com/in", '["order.*"]')

    assert "must not point to a private" in private.content.decode()
    assert "invalid pattern" in bad_pattern.content.decode()
    assert good.status_code == 302
    assert Subscription.objects.get().tenant == acme


# --- The dashboard ---


@pytest.fixture
def known_traffic(subscribe) -> dict[str, Subscription]:
    """Deliveries at known times before now: 5 succeeded, 1 failed, 1 pending, 1 cancelled in the window."""
    now = timezone.now()
    healthy = subscribe("https://healthy.example.com/in")
    broken = subscribe("https://broken.example.com/in?token=secret")
    for hours in (1, 1, 1, 5, 5):
        make_delivery(healthy, Status.SUCCEEDED, now - timedelta(hours=hours))
    make_delivery(broken, Status.FAILED, now - timedelta(hours=1), completed_at=now - timedelta(minutes=30))
    make_delivery(broken, Status.PENDING, now - timedelta(hours=2, minutes=5), failures=2, next_attempt_at=now)
    make_delivery(healthy, Status.CANCELLED, now - timedelta(hours=3))
    make_delivery(healthy, Status.SUCCEEDED, now - timedelta(hours=30))  # outside the window
    return {"healthy": healthy, "broken": broken}


def test_the_dashboard_counts_the_last_24_hours_per_hour(known_traffic: dict[str, Subscription]) -> None:
    now = timezone.now()

    summary = dashboard.summary(now)

    assert summary.since == now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    assert len(summary.hours) == 24
    assert summary.hours[-1].start <= now < summary.hours[-1].start + timedelta(hours=1)
    counts = {b.start: b.counts for b in summary.hours if b.total}
    hour = now.replace(minute=0, second=0, microsecond=0)
    assert counts[hour - timedelta(hours=1)] == {"pending": 0, "succeeded": 3, "failed": 1, "cancelled": 0}
    assert counts[hour - timedelta(hours=5)]["succeeded"] == 2
    assert sum(b.total for b in summary.hours) == 8
    assert summary.success_rate == 5 / 6
    assert summary.pending == 1
    assert timedelta(hours=2, minutes=5) <= summary.oldest_pending_age < timedelta(hours=2, minutes=6)
    [failing] = summary.failing
    assert (failing.subscription, failing.failed, failing.retrying) == (known_traffic["broken"], 1, 1)


def test_the_dashboard_page_shows_the_numbers_and_a_chart(
    operator: Client, known_traffic: dict[str, Subscription]
) -> None:
    response = operator.get("/admin/dashboard/")
    page = response.content.decode()

    assert response.status_code == 200
    assert re.search(r'id="card-success-rate"><div class="value bad">83.3%</div>', page)
    assert re.search(r'id="card-pending"><div class="value">1</div>', page)
    assert re.search(r'id="card-oldest-pending"><div class="value">2 h 5 min</div>', page)
    assert re.search(r'id="total-succeeded">5<', page) and re.search(r'id="total-failed">1<', page)
    assert page.count('class="hr-bar"') == 24
    assert len(re.findall(r'<rect class="hr-succeeded"', page)) == 2
    assert re.search(r"<title>\d\d:00 UTC: 3 succeeded, 1 failed</title>", page)
    failing = page.split('id="failing-subscriptions"')[1]
    assert known_traffic["broken"].pk in failing and known_traffic["healthy"].pk not in failing
    assert "https://broken.example.com/in<" in failing and "token=secret" not in failing
    assert "<script" not in page.split('id="content-main"')[1]
    assert 'href="/admin/dashboard/"' in operator.get("/admin/").content.decode()


def test_the_dashboard_with_no_traffic(operator: Client) -> None:
    page = operator.get("/admin/dashboard/").content.decode()

    assert 'id="no-failing"' in page
    assert re.search(r'id="card-success-rate"><div class="value ">—</div>', page)


def test_the_dashboard_needs_permission_to_view_deliveries(client: Client, django_user_model) -> None:
    staff = django_user_model.objects.create_user("intern", password="pw", is_staff=True)
    client.force_login(staff)

    assert client.get("/admin/dashboard/", HTTP_HOST="localhost").status_code == 403
    client.logout()
    assert client.get("/admin/dashboard/", HTTP_HOST="localhost").status_code == 302
