"""A real browser (Debian's Chromium, headless, driven by Playwright) walks the operators' console.

Log in, read the dashboard, find a failed delivery by its event id, redeliver it to an endpoint that now
answers 200 and see the new attempt; on a 1366 px wide screen, every list shows its key columns without
scrolling sideways. The walk-through's screenshots land in a temporary folder; with REFRESH_SCREENSHOTS=1
they replace docs/screenshots/dashboard.png and delivery.png, which the README shows.
"""

import os
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone

from deliveries.models import Attempt, Delivery, Status
from deliveries.worker import deliver_batch
from subscriptions.models import Subscription, Tenant
from tests.conftest import REQUIRE_SERVICES, reply_sequence
from tests.receiver import Receiver, Reply
from webhooks import publish
from webhooks.models import Event

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs/screenshots"
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 15_000


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements.txt)"
    if not CHROMIUM.exists():
        return f"Chromium is not installed at {CHROMIUM} (.ci/install-browser installs Debian's chromium)"
    return None


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go: the docs only when asked, so a test run leaves the working tree as it was."""
    if os.environ.get("REFRESH_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return tmp_path


def test_screenshots_stay_out_of_the_docs_unless_asked(request, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REFRESH_SCREENSHOTS", raising=False)

    assert request.getfixturevalue("screenshots") == tmp_path


@pytest.fixture
def browser(monkeypatch) -> Iterator[object]:
    missing = browser_missing()
    if missing:
        if REQUIRE_SERVICES:
            pytest.fail(f"REQUIRE_SERVICES=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the ORM calls the test makes between
    # browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        # Inside Playwright's loop Django keys its connections to a context of their own: close the ones
        # the test opened there, or the test database cannot be dropped at the end of the run.
        connections.close_all()


def seed_a_day_of_traffic() -> None:
    """A day of other deliveries, so the dashboard has something to show: an outage in the small hours."""
    now, rng = timezone.now(), random.Random(4)  # noqa: S311 - a fixed picture, not security
    acme, globex = Tenant.objects.create(slug="acme"), Tenant.objects.create(slug="globex")
    shop = Subscription.objects.create(url="https://shop.acme.example/webhooks", events=["order.*"], tenant=acme)
    crm = Subscription.objects.create(
        url="https://crm.globex.example/hooks/in?token=s3cr3t",
        events=["#"],
        tenant=globex,
        is_active=False,
        disabled_reason="5 consecutive failed deliveries",
        consecutive_failures=5,
    )
    billing = Subscription.objects.create(url="https://billing.globex.example/events", events=["#"], tenant=globex)
    deliveries = []
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    for hours_ago in range(23, -1, -1):
        start = this_hour - timedelta(hours=hours_ago)
        created = start + timedelta(seconds=rng.randint(0, min(3599, int((now - start).total_seconds()))))
        event = Event.objects.create(type="order.created", data={"batch": hours_ago}, tenant=acme, created_at=created)
        outage = 14 <= hours_ago <= 17
        plan = [(shop, Status.SUCCEEDED)] * rng.randint(25, 60)
        plan += [(crm, Status.FAILED)] * (rng.randint(6, 14) if outage else rng.randint(0, 1))
        plan += [(billing, Status.CANCELLED)] * rng.randint(0, 2)
        plan += [(billing, Status.PENDING)] * (rng.randint(3, 6) if hours_ago < 2 else 0)
        deliveries += [past_delivery(event, subscription, status, created, now) for subscription, status in plan]
    Delivery.objects.bulk_create(deliveries)


def past_delivery(event: Event, subscription: Subscription, status: str, created, now) -> Delivery:
    pending = status == Status.PENDING
    return Delivery(
        event=event,
        subscription=subscription,
        event_type=event.type,
        status=status,
        attempt_count=1 if status != Status.CANCELLED else 0,
        failures=1 if status in (Status.PENDING, Status.FAILED) else 0,
        created_at=created,
        # Pending ones are retrying later, never due during the test.
        next_attempt_at=now + timedelta(minutes=30) if pending else None,
        completed_at=None if pending else created + timedelta(seconds=1),
        last_status_code=200 if status == Status.SUCCEEDED else 502,
    )


@pytest.fixture
def failed_delivery(transactional_db, receiver: Receiver, allow_loopback, settings) -> Delivery:
    """A real delivery to the local receiver that failed three times (500, 500, 503) and gave up."""
    settings.WEBHOOK_RETRY_SCHEDULE = [0, 0]
    receiver.reply = reply_sequence(
        Reply(500, b'{"error": "database unavailable"}'),
        Reply(500, b'{"error": "database unavailable"}'),
        Reply(503, b"Service Unavailable"),
        Reply(200, b'{"received": true}'),
    )
    seed_a_day_of_traffic()
    Subscription.objects.create(url=receiver.url("/webhooks/invoices"), events=["invoice.*"])
    event = publish("invoice.paid", {"invoice": "INV-2041", "amount": "129.00", "currency": "EUR"})
    while deliver_batch():
        pass
    delivery = Delivery.objects.get(event=event)
    assert (delivery.status, delivery.attempts.count()) == (Status.FAILED, 3)
    return delivery


@pytest.fixture
def longest_values(transactional_db) -> None:
    """The widest values each list column can meet: a 50-character slug, a 2 KB URL, a 125-character event
    type, 100 patterns, a 500-character reason, a 200-character error; the newest rows, so they are on top."""
    now = timezone.now()
    tenant = Tenant.objects.create(slug="a-tenant-with-the-longest-slug-there-can-be-50-chr")
    subscription = Subscription.objects.create(
        url="https://" + "h" * 60 + ".example.com/" + "p" * 1900 + "?token=s3cr3t",
        events=[f"pattern-number-{n:03}.{'w' * 20}.#" for n in range(100)],
        tenant=tenant,
        is_active=False,
        disabled_reason="disabled in the admin by " + "o" * 475,
        consecutive_failures=12345,
        last_success_at=now - timedelta(days=400, seconds=1),
    )
    event_type = ".".join(["abcdefghijklm"] * 9)
    event = Event.objects.create(type=event_type, data={}, tenant=tenant)
    delivery = Delivery.objects.create(
        event=event,
        subscription=subscription,
        event_type=event_type,
        attempt_count=12345,
        failures=5,
        next_attempt_at=now + timedelta(days=400, seconds=1),
        last_status_code=503,
        last_error="x" * 200,
    )
    Attempt.objects.create(
        delivery=delivery, number=12345, started_at=now, duration_ms=15000, status_code=503, error="e" * 200
    )


def log_in(page, live_server, django_user_model) -> None:
    django_user_model.objects.create_superuser("operator", "ops@example.com", PASSWORD)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")


def test_an_operator_finds_a_failed_delivery_and_redelivers_it(
    browser,
    transactional_db,
    failed_delivery: Delivery,
    live_server,
    django_user_model,
    receiver: Receiver,
    screenshots: Path,
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, live_server, django_user_model)
    page.click("text=Delivery dashboard")

    expect(page.locator("#card-pending .value")).to_have_text(str(Delivery.objects.filter(status="pending").count()))
    expect(page.locator("svg.hr-chart g.hr-bar")).to_have_count(24)
    expect(page.locator("#failing-subscriptions")).to_contain_text("5 consecutive failed deliveries")
    page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/deliveries/delivery/")
    page.fill("#searchbar", failed_delivery.event_id)
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.click("#result_list tbody a:has-text('invoice.paid')")

    expect(page.locator(".field-status_label .hr-status")).to_have_text("failed")
    expect(page.locator("#attempts-group tbody tr.has_original")).to_have_count(3)
    page.click("#redeliver-now")
    expect(page.locator(".messagelist")).to_contain_text("Queued 1 delivery for redelivery now.")
    expect(page.locator(".field-status_label .hr-status")).to_have_text("pending")

    assert deliver_batch() == 1  # what a worker would do now
    page.reload()

    expect(page.locator(".field-status_label .hr-status")).to_have_text("succeeded")
    newest = page.locator("#attempts-group tbody tr.has_original").first
    expect(newest.locator(".field-number")).to_have_text("4")
    expect(newest.locator(".field-status_code")).to_have_text("200")
    expect(newest.locator(".field-outcome")).to_have_text("succeeded")
    expect(newest.locator(".field-response_excerpt")).to_contain_text('{"received": true}')
    page.screenshot(path=str(screenshots / "delivery.png"), full_page=True)

    webhook_ids = {request.headers["webhook-id"] for request in receiver.requests}
    assert webhook_ids == {failed_delivery.event_id} and len(receiver.requests) == 4
    assert Attempt.objects.filter(delivery=failed_delivery, success=True).count() == 1


# A list's key columns: what an operator reads to decide what to open.
KEY_COLUMNS = {
    "/admin/deliveries/delivery/": [
        "status_label",
        "event_type_label",
        "endpoint",
        "attempts",
        "last_status",
        "next_attempt",
        "created",
    ],
    "/admin/subscriptions/subscription/": ["endpoint", "tenant_slug", "patterns", "state", "failures", "last_success"],
    "/admin/webhooks/event/": ["id", "event_type", "tenant_slug", "created", "deliveries_by_status"],
    "/admin/deliveries/attempt/": ["attempt", "delivery_link", "started", "status_code", "outcome", "error_text"],
}
SMALL_SCREEN = {"width": 1366, "height": 768}


@pytest.mark.parametrize("url", list(KEY_COLUMNS))
def test_each_list_shows_its_key_columns_on_a_1366_pixel_screen(
    browser,
    transactional_db,
    failed_delivery: Delivery,
    longest_values: None,
    live_server,
    django_user_model,
    tmp_path: Path,
    url: str,
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport=SMALL_SCREEN)
    log_in(page, live_server, django_user_model)
    page.goto(f"{live_server.url}{url}")
    expect(page.locator("#result_list tbody tr").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "list.png"))  # to look at when it fails

    for column in KEY_COLUMNS[url]:
        box = page.locator(f"#result_list thead th.column-{column}").bounding_box()
        assert box is not None, f"{url}: no column {column}"
        assert box["x"] >= 0 and box["x"] + box["width"] <= SMALL_SCREEN["width"], f"{url}: {column} at {box}"
    widths = page.evaluate(
        """() => [document.querySelector("#changelist .results"), document.documentElement]
                .map(element => [element.scrollWidth, element.clientWidth])"""
    )
    assert all(scroll <= client for scroll, client in widths), f"{url} scrolls sideways: {widths}"


def test_the_pages_behind_the_lists_wrap_the_longest_values_on_a_1366_pixel_screen(
    browser, transactional_db, longest_values: None, live_server, django_user_model, tmp_path: Path
) -> None:
    delivery = Delivery.objects.get(attempt_count=12345)
    page = browser.new_page(viewport=SMALL_SCREEN)
    log_in(page, live_server, django_user_model)
    pages = {
        "subscription": f"/admin/subscriptions/subscription/{delivery.subscription_id}/change/",
        "delivery": f"/admin/deliveries/delivery/{delivery.pk}/change/",
        "event": f"/admin/webhooks/event/{delivery.event_id}/change/",
        "attempt": f"/admin/deliveries/attempt/{delivery.attempts.get().pk}/change/",
        "dashboard": "/admin/dashboard/",
    }
    for name, url in pages.items():
        page.goto(f"{live_server.url}{url}")
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
        width = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width[0] <= width[1], f"the {name} page scrolls sideways: {width}"
