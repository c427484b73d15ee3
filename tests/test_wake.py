"""Wake-ups: the doorbell a lingering drain waits on, against the real Redis (DESIGN.md sections 1 and 2)."""

import threading
import time
from collections.abc import Callable

import pytest
import redis
from django.conf import settings
from django.db import connection

from deliveries import wake, worker
from deliveries.models import Delivery, Status
from subscriptions.models import Subscription
from tests.receiver import Receiver, Reply
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


def idle_drain(
    monkeypatch: pytest.MonkeyPatch, linger: float, budget: float = 30
) -> tuple[threading.Thread, threading.Event, list[int]]:
    """A drain in a thread, an event set each time it waits for a ring (the real wait, called through), and
    the list its count of handled rows goes to when it ends."""
    idle = threading.Event()
    handled: list[int] = []

    def waiting(seconds: float) -> bool:
        idle.set()
        return wake.wait_for_ring(seconds)

    def run_drain() -> None:
        try:
            handled.append(worker.drain(budget=budget, linger=linger))
        finally:
            connection.close()

    monkeypatch.setattr(worker, "wait_for_ring", waiting)
    return threading.Thread(target=run_drain), idle, handled


@pytest.fixture
def waiting_drain(
    transactional_db,
    flush_redis,
    allow_loopback,
    receiver: Receiver,
    subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Thread, list[int]]:
    """A subscription to ``receiver``, and a drain (linger 3 s) started and already waiting for a ring."""
    subscribe(receiver.url())
    drainer, idle, handled = idle_drain(monkeypatch, linger=3, budget=20)
    drainer.start()
    assert idle.wait(10), "the drain never went idle"
    return drainer, handled


def test_a_lingering_drain_delivers_an_event_published_after_it_went_idle(
    waiting_drain: tuple[threading.Thread, list[int]], receiver: Receiver
) -> None:
    # No Celery worker runs here: only the drain that is already waiting can deliver the event.
    drainer, handled = waiting_drain
    event = publish("order.created", {"id": 1})
    assert not store().exists(wake.WAKE_KEY), "a drain was listening: the publish must queue no task"
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


def store() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def test_one_drain_at_a_time_is_the_listener(flush_redis) -> None:
    assert wake.listen("a") is True
    assert wake.listen("b") is False
    assert wake.listen("a") is True  # a refresh
    assert 0 < store().ttl(wake.LISTENER_KEY) <= wake.LISTENER_TTL  # a killed listener is forgotten

    assert wake.stop_listening("b") is False  # not b's to let go, and nobody rang
    assert wake.listen("b") is False
    assert wake.stop_listening("a") is False
    assert wake.listen("b") is True


def test_while_a_drain_listens_a_wake_up_only_rings(flush_redis) -> None:
    assert wake.listen("a")
    wake.wake()
    assert not store().exists(wake.WAKE_KEY)  # no drain task queued: the listener will look

    assert wake.stop_listening("a") is True  # the ring it never heard: its drain passes it on
    assert wake.wait_for_ring(0.2) is False  # taken with the key, not left for a drain to find twice
    wake.wake()
    assert store().exists(wake.WAKE_KEY)  # nobody listens: a task is queued


def test_a_full_claim_asks_for_help_even_with_a_listener(flush_redis) -> None:
    assert wake.listen("a")

    wake.wake(help_wanted=True)

    assert store().exists(wake.WAKE_KEY)
    assert wake.wait_for_ring(1) is True


def test_only_the_listener_lingers(transactional_db, flush_redis, monkeypatch: pytest.MonkeyPatch) -> None:
    listener, idle, _ = idle_drain(monkeypatch, linger=6)
    listener.start()
    assert idle.wait(10), "the first drain never went idle"
    assert store().exists(wake.LISTENER_KEY)

    assert worker.drain(budget=30, linger=6) == 0  # nothing due and another drain listens: it ends

    assert listener.is_alive(), "the second drain must end at once, not linger beside the listener"
    listener.join(timeout=20)
    assert not store().exists(wake.LISTENER_KEY)  # let go when it ended


def test_a_drain_waiting_on_a_slow_send_stops_listening(
    transactional_db,
    flush_redis,
    allow_loopback,
    subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "_slowness", worker.Slowness())
    slow = Receiver(lambda request: (time.sleep(2), Reply())[1]).start()
    try:
        subscribe(slow.url("/slow"))
        drainer, idle, _ = idle_drain(monkeypatch, linger=3)
        drainer.start()
        assert idle.wait(10), "the drain never went idle"
        assert store().exists(wake.LISTENER_KEY)
        idle.clear()

        publish("order.created", {"id": 1})
        slow.wait_for(1, timeout=10)
        deadline = time.monotonic() + 10
        while store().exists(wake.LISTENER_KEY) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not store().exists(wake.LISTENER_KEY), "a drain held by a slow send must stop listening"
        assert not idle.is_set()  # still sending: it let go because the send is slow, not because it idled
        store().delete(wake.WAKE_KEY)
        publish("order.created", {"id": 2})

        assert store().exists(wake.WAKE_KEY)  # so another worker process takes the fresh event
        drainer.join(timeout=30)
    finally:
        slow.stop()


# --- A listener's promise to look again: publishes skip their rings ---


def test_a_publish_within_a_listeners_promise_does_not_ring(flush_redis) -> None:
    assert wake.listen("a")
    assert wake.promise("a", 0.5)

    wake.wake_after_publish()  # rings, and learns how long the promise has left
    assert wake.wait_for_ring(0.2) is True
    wake.wake_after_publish()
    wake.wake_after_publish()

    assert wake.wait_for_ring(0.2) is False
    assert not store().exists(wake.WAKE_KEY)
    time.sleep(0.5)
    wake.wake_after_publish()  # the promise has run out: ring again
    assert wake.wait_for_ring(0.2) is True


def test_only_the_listener_promises_and_letting_go_withdraws_the_promise(flush_redis) -> None:
    assert wake.listen("a")
    assert wake.promise("b", 5) is False
    assert not store().exists(wake.PROMISE_KEY)

    assert wake.promise("a", 5) is True
    assert 0 < store().pttl(wake.PROMISE_KEY) <= 5000
    wake.stop_listening("a")

    assert not store().exists(wake.PROMISE_KEY)  # no more publishes learn it
    wake.wake_after_publish()
    assert store().exists(wake.WAKE_KEY)  # nobody listens: a task is queued


def test_a_listener_keeps_its_promise_to_publishes_that_did_not_ring(
    waiting_drain: tuple[threading.Thread, list[int]],
) -> None:
    # No Celery worker runs here: only the listening drain can deliver, and after the burst nothing rings.
    drainer, handled = waiting_drain
    for n in range(20):  # a stream: a claim finds several rows and the listener promises to look again
        publish("order.created", {"id": n})
    deadline = time.monotonic() + 10
    while not store().exists(wake.PROMISE_KEY) and time.monotonic() < deadline:
        publish("order.created", {"id": -1})
    assert store().exists(wake.PROMISE_KEY), "a listener finding a stream of rows must promise to look again"
    while wake._client().promised_until < time.monotonic() + 0.02 and time.monotonic() < deadline:
        publish("order.created", {"id": -1})  # until this process has learned a promise with time left
    store().delete(wake.DOORBELL_KEY)

    last = publish("order.created", {"id": 99})

    assert not store().exists(wake.DOORBELL_KEY), "the promise covered this publish: it must not ring"
    wait_until_delivered(last.id)
    assert drainer.is_alive(), "the listening drain must deliver it, not a new one"
    drainer.join(timeout=20)
    assert not Delivery.objects.exclude(status=Status.SUCCEEDED).exists()
    assert handled == [Delivery.objects.count()]


def test_a_drain_ending_before_its_promise_runs_out_hands_the_look_on(
    transactional_db,
    flush_redis,
    allow_loopback,
    receiver: Receiver,
    subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "PROMISE_SECONDS", 1.0)  # well past the drain's budget
    subscribe(receiver.url())
    for n in range(5):
        publish("order.created", {"id": n})
    store().delete(wake.WAKE_KEY)
    drain = worker.Drain(budget=0.3, linger=3)
    assert drain.become_listener()
    original_claim = drain.claim_jobs

    def claim_and_note(*args, **kwargs):
        jobs = original_claim(*args, **kwargs)
        if drain.promised_until:
            claim_and_note.promised.append(drain.promised_until)
        return jobs

    claim_and_note.promised = []
    drain.claim_jobs = claim_and_note

    assert drain.run() == 5
    ended = time.monotonic()

    assert claim_and_note.promised, "the claim of five rows must have promised another look"
    assert ended >= max(claim_and_note.promised)  # waited the promise out
    assert store().exists(wake.WAKE_KEY)  # then asked for the next drain, which looks after it ran out


def test_a_listener_gathers_longer_after_a_busy_claim_than_after_a_trickle(
    transactional_db,
    flush_redis,
    allow_loopback,
    receiver: Receiver,
    subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Waits far apart, so what the drain asks to sleep tells them apart however slow the machine.
    monkeypatch.setattr(worker, "GATHER_SECONDS", 0.0)
    monkeypatch.setattr(worker, "BUSY_GATHER_SECONDS", 30.0)
    monkeypatch.setattr(worker, "PROMISE_SECONDS", 60.0)
    subscribe(receiver.url())
    for n in range(worker.BUSY_ROWS):
        publish("order.created", {"id": n})
    drain = worker.Drain(budget=120, linger=1)
    assert drain.become_listener()
    slept: list[float] = []
    this_thread, real_sleep = threading.get_ident(), time.sleep

    def sleep(seconds: float) -> None:  # time.sleep is the module's, shared with threads of other tests
        if threading.get_ident() == this_thread:
            slept.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(worker.time, "sleep", sleep)

    assert len(drain.claim_jobs(100)) == worker.BUSY_ROWS
    assert drain.promised_until, "a listener finding a stream of rows promises to look again"
    assert drain.wait_for_work()
    assert len(slept) == 1 and 20 < slept[0] <= 30, "after a busy claim the next look waits the longer gather"

    publish("order.created", {"id": -1})
    assert len(drain.claim_jobs(100)) == 1
    slept.clear()
    assert drain.wait_for_work()
    assert slept == [], "after a claim of one row the next look comes at once (the short gather)"
    worker._release_unsent(list(drain.queued))
    drain.stop_listening()


def wait_until_delivered(event_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Delivery.objects.filter(event_id=event_id, status=Status.SUCCEEDED).exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"the delivery of {event_id} never succeeded")
