"""Wake-ups: the doorbell a lingering drain waits on, against the real Redis (DESIGN.md sections 1 and 2)."""

import threading
from collections.abc import Callable

import pytest
from django.db import connection

from deliveries import wake, worker
from deliveries.models import Delivery, Status
from subscriptions.models import Subscription
from tests.receiver import Receiver
from webhooks import publish

pytestmark = pytest.mark.services


def test_a_wake_up_rings_the_doorbell_once_however_often_it_is_rung(flush_redis) -> None:
    for _ in range(3):
        wake.wake()

    assert wake.wait_for_ring(1) is True
    assert wake.wait_for_ring(0.2) is False  # rings are merged: a drain looks at every due row anyway


def test_a_waiting_drain_hears_the_ring(flush_redis) -> None:
    heard: list[bool] = []
    waiter = threading.Thread(target=lambda: heard.append(wake.wait_for_ring(10)))
    waiter.start()
    wake.wake()
    waiter.join(timeout=5)

    assert heard == [True]


def test_a_lingering_drain_delivers_an_event_published_after_it_went_idle(
    transactional_db,
    flush_redis,
    allow_loopback,
    receiver: Receiver,
    subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No Celery worker runs here: only the drain that is already waiting can deliver the event.
    subscribe(receiver.url())
    idle = threading.Event()
    handled: list[int] = []

    def waiting(seconds: float) -> bool:  # calls through: it only tells the test the drain is idle
        idle.set()
        return wake.wait_for_ring(seconds)

    def run_drain() -> None:
        try:
            handled.append(worker.drain(budget=20, linger=3))
        finally:
            connection.close()

    monkeypatch.setattr(worker, "wait_for_ring", waiting)
    drainer = threading.Thread(target=run_drain)
    drainer.start()
    assert idle.wait(10), "the drain never went idle"
    event = publish("order.created", {"id": 1})
    (got,) = receiver.wait_for(1, timeout=10)
    assert drainer.is_alive(), "the event must be delivered by the lingering drain, not a new one"
    drainer.join(timeout=20)

    assert got.headers["webhook-id"] == event.id
    assert handled == [1]
    assert Delivery.objects.get(event=event).status == Status.SUCCEEDED


@pytest.mark.django_db
def test_without_redis_an_idle_drain_looks_at_the_rows_once_and_ends(settings) -> None:
    from django.test.utils import CaptureQueriesContext

    settings.REDIS_URL = ""  # nothing to wait on: lingering would only poll the table in a loop

    with CaptureQueriesContext(connection) as queries:
        assert worker.drain(budget=5, linger=2) == 0

    claims = [q for q in queries.captured_queries if "FOR UPDATE SKIP LOCKED" in q["sql"] or "json_each" in q["sql"]]
    assert len(claims) == 1, claims


def test_a_wake_up_still_rings_after_redis_forgot_its_scripts(flush_redis) -> None:
    import redis
    from django.conf import settings

    wake.wake()
    assert wake.wait_for_ring(1) is True
    redis.Redis.from_url(settings.REDIS_URL).script_flush()  # as after a restart of Redis

    wake.wake()

    assert wake.wait_for_ring(1) is True
