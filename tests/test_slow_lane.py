"""Slow endpoints do not hold up healthy ones (DESIGN.md section 6, issue 6 isolation).

A send still running after ``Slowness.threshold()`` gives up its fresh slot; its subscription moves to the slow
lane with a few threads of its own. Checked in-process against real receivers, by the order in which
things happen rather than by how long they take.
"""

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from deliveries import worker
from deliveries.models import Attempt, Delivery, Status
from subscriptions.models import Subscription
from tests.receiver import Receiver, Reply
from webhooks import publish

pytestmark = pytest.mark.django_db


class SlowPeer:
    """A receiver that answers after ``delay`` seconds and counts how many requests it holds at once."""

    def __init__(self, delay: float) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered_at: list[float] = []
        self.receiver = Receiver(self.reply).start()
        self.delay = delay

    def reply(self, request) -> Reply:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
            self.answered_at.append(time.time())
        return Reply()

    def stop(self) -> None:
        self.receiver.stop()


@pytest.fixture
def slow_peer() -> SlowPeer:
    peer = SlowPeer(delay=1.5)
    yield peer
    peer.stop()


@pytest.fixture(autouse=True)
def forget_slowness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "_slowness", worker.Slowness())


def test_healthy_endpoints_are_served_while_slow_ones_are_still_answering(
    settings, allow_loopback, receiver: Receiver, slow_peer: SlowPeer, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_SEND_CONCURRENCY = 4
    settings.WEBHOOK_BATCH_SIZE = 10
    for n in range(6):
        subscribe(slow_peer.receiver.url(f"/slow/{n}"))
    subscribe(receiver.url("/healthy"))
    for n in range(12):
        publish("order.created", {"n": n})

    assert worker.drain() == 12 * 7

    healthy = receiver.wait_for(12)
    # Six slow endpoints outnumber the four fresh slots: before the slow lane, the healthy endpoint's
    # rows waited behind them, batch after batch.
    first_slow_answer = min(slow_peer.answered_at)
    assert max(r.arrived_at for r in healthy) < first_slow_answer
    assert Delivery.objects.filter(status=Status.SUCCEEDED).count() == 12 * 7


def test_a_slow_subscription_gets_only_its_share_of_threads(
    settings, allow_loopback, slow_peer: SlowPeer, subscribe: Callable[..., Subscription]
) -> None:
    settings.WEBHOOK_SEND_CONCURRENCY = 2
    settings.WEBHOOK_BATCH_SIZE = 20
    subscription = subscribe(slow_peer.receiver.url())
    for n in range(12):
        publish("order.created", {"n": n})

    assert worker.drain() == 12

    # Two fresh sends reveal it as slow; from then on it never has more than its slow-lane share.
    assert slow_peer.most_in_flight <= worker.SLOW_PER_SUBSCRIPTION
    assert Attempt.objects.filter(delivery__subscription=subscription, success=True).count() == 12


def test_a_full_lane_gives_its_next_thread_to_an_endpoint_slow_once_not_to_a_dead_one(
    settings, allow_loopback, receiver: Receiver, subscribe: Callable[..., Subscription]
) -> None:
    # Twenty dead endpoints fill the lane. A healthy one that answered slowly once (a pause of this
    # process, say) must get the next free thread: its fast answer then takes it out of the lane. In the
    # lane's set order it waited behind the dead ones, and lost a quarter of its throughput (isolation).
    settings.WEBHOOK_SEND_CONCURRENCY = 2
    settings.WEBHOOK_SEND_THREADS = 3  # one thread for the lane
    dead = [subscribe(receiver.url(f"/dead/{n}"), events=["order.dead"]) for n in range(20)]
    healthy = subscribe(receiver.url("/healthy"), events=["order.created"])
    publish("order.dead", {"n": 1})
    publish("order.created", {"n": 2})
    now = time.monotonic()
    for subscription in dead:
        worker._slowness.saw(subscription.id, 10.0, now)  # timed out
    worker._slowness.saw(healthy.id, 0.3, now)  # slow once

    drain = worker.Drain(5)
    drain.lane = {subscription.id for subscription in [*dead, healthy]}
    with worker.drain_session():
        started = drain.top_up_slow_lane(Counter(), slow_room=1, now=now)
        lane = [job.subscription_id for job in drain.running]
        drain._run()

    assert started == 1
    assert lane == [healthy.id]
    assert receiver.wait_for(21)


def test_a_retry_after_a_timeout_starts_in_the_slow_lane(
    allow_loopback, receiver: Receiver, subscribe: Callable[..., Subscription]
) -> None:
    # Retries must not starve fresh deliveries: one whose last attempt took the whole timeout never
    # takes a fresh slot, while a first attempt to the same kind of endpoint does.
    slow_one = subscribe(receiver.url("/a"), events=["order.retried"])
    subscribe(receiver.url("/b"), events=["order.created"])
    retried = Delivery.objects.get(event=publish("order.retried", {"n": 1}), subscription=slow_one)
    Delivery.objects.filter(pk=retried.pk).update(last_error="timeout", failures=1)
    fresh = Delivery.objects.get(event=publish("order.created", {"n": 2}))

    drain = worker.Drain(5)
    with worker.drain_session():
        drain.start_sends()
        lanes = {job.delivery.pk: job.slow for job in drain.running}
        drain._run()

    assert lanes[retried.pk] is True
    assert lanes[fresh.pk] is False
    assert receiver.wait_for(2)


def test_send_threads_are_reused_and_started_only_when_all_are_busy() -> None:
    threads = worker.SendThreads(limit=3)
    release = threading.Event()
    done: list[int] = []
    lock = threading.Lock()

    def finished(n: int) -> Callable[[], None]:
        def then() -> None:
            with lock:
                done.append(n)

        return then

    for n in range(200):  # one at a time: one thread does them all
        threads.submit(lambda: None, finished(n))
        while len(done) <= n:
            time.sleep(0.001)
    assert threads.started == 1

    for n in range(5):  # five blocked sends, three threads: two wait for a thread, none is lost
        threads.submit(release.wait, finished(1000 + n))
    time.sleep(0.1)
    assert threads.started == 3
    release.set()
    deadline = time.monotonic() + 5
    while len(done) < 205 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(done)[-5:] == [1000, 1001, 1002, 1003, 1004]
    assert threads.started == 3


def test_slow_is_relative_to_the_typical_send_within_its_bounds() -> None:
    slowness = worker.Slowness()
    assert slowness.threshold() == worker.SLOW_AFTER  # nothing seen yet

    for _ in range(200):
        slowness.saw("fast", 0.001, now=0.0)
    assert slowness.threshold() == worker.SLOW_FLOOR  # 10 ms would be too eager

    for _ in range(200):
        slowness.saw("steady", 0.02, now=0.0)
    assert slowness.threshold() == pytest.approx(worker.SLOW_FACTOR * 0.02, rel=0.01)

    for _ in range(200):
        slowness.saw("sluggish", 0.1, now=0.0)  # under 10 x 20 ms: typical, not slow
    assert slowness.threshold() == worker.SLOW_AFTER  # never later than the ceiling


def test_slow_sends_do_not_drag_the_typical_send_up_and_a_fast_answer_forgets_them() -> None:
    slowness = worker.Slowness()
    for _ in range(100):
        slowness.saw("fast", 0.001, now=0.0)

    slowness.saw("dead", 2.0, now=0.0)

    assert slowness.threshold() == worker.SLOW_FLOOR
    assert slowness.is_slow("dead", now=1.0)
    assert not slowness.is_slow("dead", now=worker.SLOW_MEMORY + 1)
    slowness.saw("dead", 0.001, now=2.0)
    assert not slowness.is_slow("dead", now=3.0)
