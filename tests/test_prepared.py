"""The hot statements are prepared once per connection on PostgreSQL (config/db.py, issue 6)."""

from collections.abc import Callable

import pytest
from django.db import connection

from deliveries.worker import claim_deliveries
from subscriptions.models import Subscription
from webhooks import publish

pytestmark = pytest.mark.services
URL = "https://hooks.example.com/in"
PUBLISH = "WITH new_event AS (INSERT INTO webhooks_event"
CLAIM = "WITH due AS (SELECT id FROM deliveries_delivery"


def prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [statement for (statement,) in cursor.fetchall()]


def test_publish_and_claim_are_prepared_once_however_often_they_run(
    subscribe: Callable[..., Subscription],
) -> None:
    subscribe(URL)
    publish("order.created", {"n": 0})  # reads the subscriptions, then inserts
    publish("order.created", {"n": 1})  # inserts if they are unchanged
    claim_deliveries(1)
    first = prepared()

    for n in range(2, 7):
        publish("order.created", {"n": n})
    claimed = claim_deliveries(3) + claim_deliveries(3)

    assert len(claimed) == 6
    assert any(s.startswith(PUBLISH) for s in first) and any(s.startswith(CLAIM) for s in first), first
    assert sorted(prepared()) == sorted(first)  # run again, planned once: nothing new is prepared


def test_with_prepared_statements_off_nothing_new_is_prepared(subscribe: Callable[..., Subscription], settings) -> None:
    settings.WEBHOOK_PREPARED_STATEMENTS = False  # behind a transaction-pooling PgBouncer
    subscribe(URL)
    before = set(prepared())

    for n in range(3):
        publish("order.created", {"n": n})
    claim_deliveries(10)

    assert set(prepared()) == before
