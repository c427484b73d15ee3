"""The hot statements are prepared once per connection on PostgreSQL (config/db.py, issue 6)."""

from collections.abc import Callable

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from config.db import planned_once
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


@pytest.mark.django_db
def test_one_cursor_serves_a_connection_statement_after_statement() -> None:
    with planned_once() as first:
        first.execute("SELECT %(n)s::int", {"n": 1})
        assert first.fetchone() == (1,)
    with planned_once() as second:
        second.execute("SELECT %(n)s::int", {"n": 2})
        assert second.fetchone() == (2,)

    assert second is first


@pytest.mark.django_db
def test_a_statement_inside_another_ones_block_gets_a_cursor_of_its_own() -> None:
    with planned_once() as outer:
        outer.execute("SELECT %(n)s::int", {"n": 1})
        with planned_once() as inner:
            inner.execute("SELECT %(n)s::int", {"n": 2})
            assert inner.fetchone() == (2,)
        assert outer.fetchone() == (1,)  # not replaced by the inner statement's result

    assert inner is not outer


@pytest.mark.django_db(transaction=True)
def test_after_a_reconnection_the_cursor_is_one_of_the_new_connection() -> None:
    with planned_once() as before:
        before.execute("SELECT pg_backend_pid()")
        (old_pid,) = before.fetchone()
    connection.close()

    with planned_once() as after:
        after.execute("SELECT pg_backend_pid()")
        (new_pid,) = after.fetchone()

    assert after is not before
    assert new_pid != old_pid


@pytest.mark.django_db
def test_statements_are_still_logged_when_queries_are_captured() -> None:
    with CaptureQueriesContext(connection) as captured, planned_once() as cursor:
        cursor.execute("SELECT %(n)s::int", {"n": 3})
        assert cursor.fetchone() == (3,)

    assert [query["sql"] for query in captured] == ["SELECT %(n)s::int"]
