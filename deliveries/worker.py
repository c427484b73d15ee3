"""The worker loop: claim due rows with a lease, send outside any transaction, record the batch.

The claim is one autocommit UPDATE, so the lease is committed before any
HTTP call; a worker killed mid-send leaves a lease that expires and the sweeper hands the row out again.
"""

import functools
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from queue import Empty, SimpleQueue

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, models, transaction
from django.db.models import F
from django.utils import timezone

from config import metrics
from config.db import planned_once
from deliveries import actions, alerts, sender
from deliveries import wake as wakeups
from deliveries.models import Attempt, Delivery, Status
from deliveries.sender import Message, Result
from deliveries.wake import clear_wake, wait_for_ring, wake
from subscriptions.models import Subscription

logger = logging.getLogger("hookrelay.deliveries")
DRAIN_BUDGET_SECONDS = 10.0
GONE_REASON = "endpoint answered 410 Gone"
SUCCESS_MARK_EVERY = timedelta(seconds=1)  # last_success_at is kept to the second, not rewritten per batch
# PostgreSQL: the CTE runs once. An "id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)" form can be
# rescanned by a nested-loop semi-join, and with SKIP LOCKED each rescan finds new rows: measured here,
# claim(20) leased 300 rows that way.
# 'pending' is written into the statement, not passed: once PostgreSQL switches a prepared claim to its
# generic plan (after five runs, when the table looked small), "status = $1" cannot prove the predicate
# of the partial index "delivery_due". That plan read every pending row by "delivery_status" and sorted
# them, leased ones included: about 870 index entries a claim in the end to end benchmark, and as many
# as the backlog holds after it grew.
CLAIMED_POSTGRESQL = (
    "WITH due AS (SELECT id FROM deliveries_delivery WHERE status = 'pending' AND next_attempt_at <= %(now)s "
    "AND NOT (subscription_id = ANY(%(exclude)s::text[])) AND (%(only)s::text IS NULL OR subscription_id = %(only)s) "
    "ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED), "
    "claimed AS (UPDATE deliveries_delivery AS d SET next_attempt_at = %(lease_until)s, "
    "attempt_count = d.attempt_count + 1 FROM due WHERE d.id = due.id RETURNING d.*) "
)
# Set on a drain's connection while it runs.
# - Every statement of a drain goes by an index. Right after a large fan-out or backlog the statistics
#   still say "a few pending rows": the planner then read and sorted every due row for each claim of 100
#   (bitmap scan + sort, 15 ms a claim at 5,000 due and growing with the backlog), joined events by a
#   sequential scan, and hash-joined every pending row to record a batch (57 ms). PostgreSQL, not the
#   workers, was then the fan-out's limit.
# - Unless WEBHOOK_WORKER_SYNCHRONOUS_COMMIT, a drain's commits (leases, attempts, new states) do not wait
#   for the WAL to reach the disk. Other sessions see them at once, as before; only a crash of PostgreSQL
#   itself can lose the last fraction of a second of them, and then those rows are leased and sent again
#   (delivery is at least once, docs/api.md) and those attempts are missing from the history.
#   publish() still waits for the disk: no event or delivery it reported is lost. Publishers and drains
#   queued for the same WAL flushes: drain 6,495 -> 7,138/s, end to end 1,227 -> 1,413/s.
DRAIN_SESSION = {"enable_bitmapscan": "off", "enable_seqscan": "off", "synchronous_commit": "off"}
SESSION_DEFAULTS = "SELECT set_config(name, reset_val, false) FROM pg_settings WHERE name = ANY(%s)"
CLAIM_SQL_POSTGRESQL = CLAIMED_POSTGRESQL + "SELECT id, attempt_count FROM claimed"  # noqa: S608 - constants
# SQLite serialises writers and evaluates the subquery once; the repeated condition keeps it honest.
SAVE_OUTCOMES_SQL = (
    "WITH v(id, number, status, next_attempt_at, completed_at, failures, last_error, last_status_code) "
    "AS (VALUES {rows}) "
    "UPDATE deliveries_delivery SET status = v.status, next_attempt_at = v.next_attempt_at, "
    "completed_at = v.completed_at, failures = v.failures, last_error = v.last_error, "
    "last_status_code = v.last_status_code FROM v "
    "WHERE deliveries_delivery.id = v.id AND deliveries_delivery.attempt_count = v.number "
    "AND deliveries_delivery.status = %s RETURNING deliveries_delivery.id"
)
# PostgreSQL: a batch's attempts and outcomes as one JSON parameter, one statement (so one implicit
# transaction). As twelve arrays, psycopg dumped each element in Python: 12 µs of CPU a row, as JSON
# (json.dumps is C) 7 µs, in process.
# "d.status = v.was" is a join condition on purpose: as a filter on d it let the planner, misled by
# stale statistics right after a fan-out, hash-join every pending row (57 ms a batch at 5,000 pending)
# instead of looking up 100 rows by primary key.
RECORD_COLUMNS = (
    "id", "number", "status", "next_attempt_at", "completed_at", "failures",
    "error", "status_code", "started_at", "duration_ms", "response_body", "success",
)  # fmt: skip
RECORD_SQL_POSTGRESQL = (
    "WITH v AS (SELECT * FROM json_to_recordset(%(rows)s::json) AS v(id varchar, number int, status varchar, "
    "next_attempt_at timestamptz, completed_at timestamptz, failures int, error text, status_code int, "
    "started_at timestamptz, duration_ms int, response_body text, success bool), "
    "(SELECT %(pending)s::varchar AS was) AS expected), "
    "attempts AS (INSERT INTO deliveries_attempt (delivery_id, number, started_at, duration_ms, status_code, error, "
    "response_body, success) SELECT id, number, started_at, duration_ms, status_code, error, response_body, success "
    "FROM v{on_conflict}) "
    "UPDATE deliveries_delivery AS d SET status = v.status, next_attempt_at = v.next_attempt_at, "
    "completed_at = v.completed_at, failures = v.failures, last_error = v.error, last_status_code = v.status_code "
    "FROM v WHERE d.id = v.id AND d.attempt_count = v.number AND d.status = v.was RETURNING d.id"
)
# The same batch again on a new connection, after the last one broke: the first statement may have committed
# before the error reached us, so attempts already there are skipped, and the update's guard (that attempt's
# number, still pending) changes no delivery twice.
RECORD_AGAIN_SQL_POSTGRESQL = RECORD_SQL_POSTGRESQL.format(on_conflict=" ON CONFLICT (delivery_id, number) DO NOTHING")
RECORD_SQL_POSTGRESQL = RECORD_SQL_POSTGRESQL.format(on_conflict="")
CLAIM_SQL_SQLITE = (
    "UPDATE deliveries_delivery SET next_attempt_at = %(lease_until)s, attempt_count = attempt_count + 1 "
    "WHERE id IN (SELECT id FROM deliveries_delivery WHERE status = %(pending)s AND next_attempt_at <= %(now)s "
    "AND subscription_id NOT IN (SELECT value FROM json_each(%(exclude)s)) "
    "AND (%(only)s IS NULL OR subscription_id = %(only)s) ORDER BY next_attempt_at LIMIT %(limit)s) "
    "AND status = %(pending)s AND next_attempt_at <= %(now)s RETURNING id, attempt_count"
)


class Loader:
    """Model instances from the JSON PostgreSQL made of their rows (``json_agg``): one C-level parse for a
    whole claim instead of a database type loader per column and row.

    Loading a claim's rows column by column cost 35-37 µs of CPU a row (six timestamps among them); as
    JSON, parsed at once, 18-21 µs (claim of 100, in process). Timestamps arrive as ISO 8601
    text; JSON columns arrive parsed; every other field of these models is a string, a number or a
    boolean in JSON too.
    """

    AS_JSON = {"CharField", "ForeignKey", "BooleanField", "IntegerField", "PositiveIntegerField"}
    AS_JSON |= {"PositiveSmallIntegerField", "JSONField"}

    def __init__(self, model: type[models.Model]) -> None:
        self.model = model
        fields = model._meta.concrete_fields
        self.attnames = [field.attname for field in fields]
        self.columns = [field.column for field in fields]
        self.times = [index for index, field in enumerate(fields) if field.get_internal_type() == "DateTimeField"]
        unknown = [f.name for f in fields if f.get_internal_type() not in self.AS_JSON | {"DateTimeField"}]
        if unknown:
            raise TypeError(f"{model.__name__} fields {unknown} need a converter to load from JSON")

    def load(self, row: dict) -> models.Model:
        values = [row[column] for column in self.columns]
        for index in self.times:
            if values[index] is not None:
                values[index] = datetime.fromisoformat(values[index])
        return self.model.from_db(connection.alias, self.attnames, values)


@functools.cache
def _claim_loader() -> tuple[str, Loader, Loader, Loader]:
    from webhooks.models import Event

    # Table names come from the models; values are parameters.
    sql = (
        f"{CLAIMED_POSTGRESQL}SELECT (SELECT json_agg(c)::text FROM claimed AS c), "  # noqa: S608
        f"(SELECT json_agg(e)::text FROM {Event._meta.db_table} AS e "
        "WHERE e.id IN (SELECT event_id FROM claimed)), "
        f"(SELECT json_agg(s)::text FROM {Subscription._meta.db_table} AS s "
        "WHERE s.id IN (SELECT subscription_id FROM claimed))"
    )
    return sql, Loader(Delivery), Loader(Event), Loader(Subscription)


def claim_deliveries(
    limit: int, exclude: set[str] = frozenset(), only: str | None = None
) -> list[tuple[Delivery, int]]:
    """``claim()``, returning the leased deliveries with their events and subscriptions loaded.

    On PostgreSQL one statement leases and loads; deliveries of one event share one Event instance, and
    of one subscription one Subscription instance.
    """
    if connection.vendor != "postgresql":
        claimed = claim(limit, exclude, only)
        deliveries = list(Delivery.objects.filter(id__in=claimed).select_related("event", "subscription"))
        _cancel_orphans({pk: claimed[pk] for pk in claimed.keys() - {delivery.id for delivery in deliveries}})
        return [(delivery, claimed[delivery.id]) for delivery in deliveries]
    sql, deliveries, events, subscriptions = _claim_loader()
    # Rows a claim lost with its connection took, if it committed, come back with their leases.
    [(claimed_rows, event_rows, subscription_rows)] = _fetched("claiming", sql, _claim_params(limit, exclude, only))
    if not claimed_rows:
        return []
    event_of = {event.pk: event for event in map(events.load, json.loads(event_rows))}
    subscription_of = {sub.pk: sub for sub in map(subscriptions.load, json.loads(subscription_rows or "[]"))}
    event_field, subscription_field = Delivery._meta.get_field("event"), Delivery._meta.get_field("subscription")
    loaded, orphans = [], {}
    for row in json.loads(claimed_rows):
        delivery = deliveries.load(row)
        subscription = subscription_of.get(delivery.subscription_id)
        if subscription is None:
            orphans[delivery.pk] = delivery.attempt_count
            continue
        event_field.set_cached_value(delivery, event_of[delivery.event_id])
        subscription_field.set_cached_value(delivery, subscription)
        loaded.append((delivery, delivery.attempt_count))
    _cancel_orphans(orphans)
    return loaded


def _cancel_orphans(claimed: dict[str, int]) -> None:
    """Claimed rows whose subscription row no longer exists: cancelled, as a deleted subscription's are, with
    the claim's attempt number given back. Subscriptions are only soft-deleted, and a trigger refuses to
    delete one that deliveries reference (no foreign key: migration 0003), but a publish that commits while
    someone deletes its subscription by hand can still leave such a row."""
    if not claimed:
        return
    now = timezone.now()
    for pk, number in claimed.items():
        Delivery.objects.filter(pk=pk, status=Status.PENDING, attempt_count=number).update(
            status=Status.CANCELLED, attempt_count=number - 1, next_attempt_at=None, completed_at=now
        )
    logger.warning("cancelled deliveries whose subscription no longer exists: %s", " ".join(sorted(claimed)))


def lease_seconds() -> int:
    """Long enough for one attempt (connect and read) plus the margin a batch needs to get to it."""
    return 2 * settings.WEBHOOK_TIMEOUT + settings.WEBHOOK_LEASE_MARGIN


def claim(limit: int, exclude: set[str] = frozenset(), only: str | None = None) -> dict[str, int]:
    """Lease up to ``limit`` due deliveries, none of the ``exclude`` subscriptions' (or ``only`` one's).

    Returns {delivery id: the attempt number this claim took}. On PostgreSQL ``SKIP LOCKED`` lets workers
    pass each other; on SQLite a conditional UPDATE does the same job (docs/architecture.md).
    """
    sql = CLAIM_SQL_POSTGRESQL if connection.vendor == "postgresql" else CLAIM_SQL_SQLITE
    with planned_once() as cursor:
        cursor.execute(sql, _claim_params(limit, exclude, only))
        return dict(cursor.fetchall())


def _claim_params(limit: int, exclude: set[str], only: str | None) -> dict:
    now = timezone.now()
    return {
        "exclude": sorted(exclude) if connection.vendor == "postgresql" else json.dumps(sorted(exclude)),
        "only": only,
        "pending": Status.PENDING.value,
        "now": connection.ops.adapt_datetimefield_value(now),
        "lease_until": connection.ops.adapt_datetimefield_value(now + timedelta(seconds=lease_seconds())),
        "limit": limit,
    }


# Compared by identity: a generated __eq__ compared every field (the delivery by its primary key) of each
# send before the one ``Drain.finish`` removes from the list in flight; with the slow lane full, about 90
# sends a process, that was a quarter of the worker's CPU in the isolation benchmark (py-spy).
@dataclass(eq=False)
class Job:
    delivery: Delivery
    number: int
    claimed_at: float = 0.0
    started_at: float = 0.0
    took: float = 0.0  # seconds the send itself took, measured in its thread
    finished_at: float = 0.0
    slow: bool = False  # a send to a slow endpoint: it holds a thread, never one of the fresh slots
    result: Result | None = None

    @property
    def subscription_id(self) -> str:
        return self.delivery.subscription_id

    @property
    def retries_a_timeout(self) -> bool:
        """A retry after a timeout: no fresh slot for an endpoint that just took the whole timeout."""
        return self.delivery.last_error == sender.TIMEOUT


class Slowness:
    """Subscriptions whose last send from this process was slow, remembered for a while.

    Their next sends go straight to the slow lane (docs/architecture.md: known-bad endpoints must not
    occupy the slots that serve fresh deliveries). A fast answer forgets it at once.

    "Slow" is relative: ``SLOW_FACTOR`` times this process's typical send (an average of the sends
    that were not slow), at least ``SLOW_FLOOR`` and at most ``SLOW_AFTER``. Each unknown slow endpoint
    holds a fresh slot until it is found out; with answers in a millisecond or two, finding it out
    after 50 ms instead of 250 ms gave the healthy endpoints back most of what 20 dead ones took
    (isolation benchmark).
    """

    def __init__(self) -> None:
        self._until: dict[str, tuple[float, float]] = {}  # subscription -> (slow until, its slow send's seconds)
        self.typical: float | None = None

    def threshold(self) -> float:
        if self.typical is None:
            return SLOW_AFTER
        return min(SLOW_AFTER, max(SLOW_FLOOR, SLOW_FACTOR * self.typical))

    def is_slow(self, subscription_id: str, now: float) -> bool:
        slow = self._until.get(subscription_id)
        return slow is not None and slow[0] > now

    def slow_send(self, subscription_id: str) -> float:
        """Seconds its last slow send took (0 if none is remembered)."""
        slow = self._until.get(subscription_id)
        return slow[1] if slow else 0.0

    def saw(self, subscription_id: str, seconds: float, now: float) -> None:
        if seconds < self.threshold():
            typical = self.typical
            self.typical = seconds if typical is None else typical + PACE_WEIGHT * (seconds - typical)
            self._until.pop(subscription_id, None)
            return
        if len(self._until) >= SLOW_REMEMBERED:
            self._until = {key: slow for key, slow in self._until.items() if slow[0] > now}
        self._until[subscription_id] = (now + SLOW_MEMORY, seconds)


SLOW_AFTER = 0.25  # seconds: a send still running after this stops holding a fresh slot, at the latest
SLOW_FLOOR = 0.05  # seconds: never slow before this, however fast the typical send
SLOW_FACTOR = 10  # times the typical send
PACE_WEIGHT = 0.05  # of each new send in the typical send's moving average
SLOW_MEMORY = 60.0  # seconds a subscription stays in the slow lane after a slow send
SLOW_REMEMBERED = 10_000
SLOW_PER_SUBSCRIPTION = 4  # sends in flight to one slow subscription, per worker process
RECORD_DELAY = 0.05  # seconds a finished send may wait to be recorded with others
LINGER_SECONDS = 2.0  # an idle drain task waits this long for a wake-up before it ends
POLL_WHILE_IDLE = 0.5
# A drain rung within this long of its last claim waits out the rest, so under a stream of events each claim
# takes what came in about that time: end to end 1,655-1,677 -> 1,730-1,736/s, latency at 200/s unchanged
# (4 ms gathered a little more and widened p95 from about 2.4 to 3-4 ms). Claims further apart never wait.
GATHER_SECONDS = 0.002
# Under a heavier stream (the last claim found at least BUSY_ROWS rows) the wait is BUSY_GATHER_SECONDS: claims
# of about 17 rows instead of 5 in the end to end benchmark, worker CPU per 1,000 deliveries 0.19-0.20 ->
# 0.16-0.17 s and end to end 1,752-1,829 -> 1,814-1,854/s (alternated runs; 15 ms gained nothing more). A
# trickle (200 events/s: one row a claim) keeps the short wait, and so its latency (p50 1.9, p99 4.4 ms).
BUSY_ROWS = 4
BUSY_GATHER_SECONDS = 0.006
# A listening claim that finds at least PROMISE_ROWS rows promises (wake.promise) to look again within
# PROMISE_SECONDS, rung or not, and keeps looking every GATHER_SECONDS while its claims keep finding rows;
# publishes in between skip their rings (wake.wake_after_publish).
PROMISE_ROWS = 2
PROMISE_SECONDS = 0.05
_slowness = Slowness()


class SendThreads:
    """Send threads, started only when every one is busy, and kept for the process's life.

    concurrent.futures' pool starts a new thread when a job arrives before the thread that just
    finished has marked itself idle, which is every time here (the drain hands out the next send the
    moment one ends): the soak benchmark saw a worker grow to its maximum of threads and 5 % of RSS.
    A thread here marks itself idle before it reports its send done.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.jobs: SimpleQueue[tuple[Callable[[], None], Callable[[], None]]] = SimpleQueue()
        self.lock = threading.Lock()
        self.started = 0
        self.idle = 0
        self.owed = 0  # jobs queued at the limit, for the next thread that finishes

    def submit(self, work: Callable[[], None], then: Callable[[], None]) -> None:
        with self.lock:
            if self.idle:
                self.idle -= 1
            elif self.started < self.limit:
                self.started += 1
                threading.Thread(target=self._serve, name=f"send-{self.started}", daemon=True).start()
            else:
                self.owed += 1
        self.jobs.put((work, then))

    def _serve(self) -> None:
        while True:
            work, then = self.jobs.get()
            try:
                work()
            except Exception:  # a bug, not a subscriber's fault: the job ends without a result
                logger.exception("a send raised")
            with self.lock:
                if self.owed:
                    self.owed -= 1  # it takes a queued job next, so it is not idle
                else:
                    self.idle += 1
            then()


_threads: SendThreads | None = None
_threads_pid = 0


def _pool() -> SendThreads:
    global _threads, _threads_pid
    if _threads is None or _threads_pid != os.getpid():
        # Fresh sends that turn slow may fill the slow lane's threads: the fresh slots keep threads of their own.
        _threads = SendThreads(settings.WEBHOOK_SEND_THREADS + settings.WEBHOOK_SEND_CONCURRENCY)
        _threads_pid = os.getpid()
    return _threads


@contextmanager
def drain_session() -> Iterator[None]:
    """``DRAIN_SESSION`` on this thread's connection while the block runs, the defaults after it."""
    if connection.vendor != "postgresql":
        yield
        return
    values = dict(DRAIN_SESSION)
    if settings.WEBHOOK_WORKER_SYNCHRONOUS_COMMIT:
        del values["synchronous_commit"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT " + ", ".join("set_config(%s, %s, false)" for _ in values),
            [item for pair in values.items() for item in pair],
        )
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute(SESSION_DEFAULTS, [list(DRAIN_SESSION)])
        except DatabaseError:  # a broken connection is replaced, with the defaults
            pass


def drain(budget: float = DRAIN_BUDGET_SECONDS, linger: float = 0.0) -> int:
    """Deliver what is due, claiming as sends finish, until nothing is due or the budget is spent.

    With ``linger``, an idle drain waits that long for a wake-up before it ends: under steady traffic
    a new event then reaches a drain that is already running, with no task to start (latency).
    """
    clear_wake()
    # Lingering waits on the Redis doorbell; without Redis an idle drain would only poll the table.
    return Drain(budget, linger=linger if settings.REDIS_URL else 0.0).run()


def deliver_batch(limit: int | None = None) -> int:
    """One claim of up to ``limit`` rows, every send of it finished and recorded; returns the rows handled."""
    return Drain(0, claims=1, batch=limit).run()


class Drain:
    """One drain: up to ``WEBHOOK_SEND_CONCURRENCY`` fresh sends at a time, recorded in batches as they end.

    The drain's thread claims, records, and sends on connections already open (``sender.Exchanges``,
    many at once on one selector); a send that must open a connection goes to a send thread, which
    only talks HTTP. A send still running after
    ``Slowness.threshold()`` (at most ``SLOW_AFTER``) gives its fresh slot to the next row, and its
    subscription goes to the slow lane: at most ``SLOW_PER_SUBSCRIPTION`` sends in flight there, and
    no new rows claimed for it while that many are. So one dead endpoint costs threads, never the
    healthy endpoints' pace.
    """

    def __init__(self, budget: float, claims: int | None = None, batch: int | None = None, linger: float = 0.0) -> None:
        self.deadline = time.monotonic() + budget
        self.linger = linger
        self.busy_at = time.monotonic()
        self.claims_left = claims
        self.batch = batch or settings.WEBHOOK_BATCH_SIZE
        self.fresh_slots = settings.WEBHOOK_SEND_CONCURRENCY
        self.lease_margin = settings.WEBHOOK_LEASE_MARGIN
        self.slow_slots = max(0, settings.WEBHOOK_SEND_THREADS - self.fresh_slots)
        self.queued: deque[Job] = deque()
        self.running: list[Job] = []
        self.lane: set[str] = set()  # slow subscriptions: claimed only for the room they have
        self.finished: list[Job] = []
        self.done: SimpleQueue[Job] = SimpleQueue()
        self.more_due = True
        self.handled = 0  # rows sent and recorded, or settled without a send; not rows given back
        self.bodies: dict[str, bytes] = {}
        self.exchanges = sender.Exchanges()  # sends on open connections, in this thread
        self.token = uuid.uuid4().hex
        self.listening = False  # the listener: rung by publishes, which then queue no drain task
        self.refresh_at = 0.0
        self.looked_at = 0.0  # when the last ordinary claim started
        self.last_claimed = 0  # rows the last ordinary claim found
        # A claim is owed that starts at or after this (0: none): publishes relied on our promise.
        self.promised_until = 0.0

    def run(self) -> int:
        try:
            with drain_session():
                return self._run()
        finally:
            self.exchanges.close()

    def _run(self) -> int:
        try:
            if self.linger:
                self.become_listener()
            while True:
                if self.listening:
                    self.keep_listening()
                if self.promised_until and time.monotonic() >= self.promised_until:
                    self.more_due = True  # the look we promised, busy or not
                self.start_sends()
                if not self.running:
                    # Idle or not, finished sends wait up to RECORD_DELAY for others: under a trickle of
                    # events, recording every send alone cost a statement and a commit each.
                    if len(self.finished) >= self.batch or self.finished_for(RECORD_DELAY):
                        self.record()
                    if self.may_claim() or (self.queued and not self.out_of_time()):
                        continue
                    if self.queued or not self.wait_for_work():
                        break
                    continue
                self.collect(timeout=RECORD_DELAY)
                if len(self.finished) >= self.batch or self.finished_for(RECORD_DELAY):
                    self.record()
            self.record()
        finally:
            _release_unsent(list(self.queued))
            if self.listening and self.stop_listening():
                self.more_due = True  # rung after its last look: the next drain sees to it
        if self.promised_until:
            # Ending before the look it promised: the next drain looks, once the promise has run out.
            time.sleep(max(0.0, self.promised_until - time.monotonic()))
            self.more_due = True
        if self.more_due and self.claims_left is None:
            wake()  # out of time with rows still due: the next drain carries on
        return self.handled

    def may_claim(self) -> bool:
        if not self.more_due or self.claims_left == 0:
            return False
        if self.claims_left is not None or not self.out_of_time():
            return True
        # Past the budget the drain must still wait for its slow sends: it keeps the fresh slots busy
        # meanwhile, so healthy endpoints never wait on a drain that is winding down.
        return self.slow_running() and time.monotonic() < self.deadline + settings.WEBHOOK_TIMEOUT

    def slow_running(self) -> bool:
        return any(job.slow for job in self.running)

    def become_listener(self) -> bool:
        self.listening = wakeups.listen(self.token)
        self.refresh_at = time.monotonic() + wakeups.LISTENER_REFRESH
        return self.listening

    def keep_listening(self) -> None:
        """Refresh the listener's key; let it go while slow sends keep this drain from the doorbell."""
        if self.slow_running():
            if self.stop_listening():
                self.more_due = True
        elif time.monotonic() >= self.refresh_at:
            self.become_listener()

    def stop_listening(self) -> bool:
        """No longer the listener; True if a publish rang meanwhile (and so queued no drain task)."""
        self.listening = False
        return wakeups.stop_listening(self.token)

    def wait_for_work(self) -> bool:
        """Idle: wait for a wake-up, looking at the rows every ``POLL_WHILE_IDLE`` (retries fall due unrung).

        Only the listener lingers; a drain that another is listening for ends when it runs out of work.
        """
        now = time.monotonic()
        if self.promised_until and self.claims_left is None and not self.out_of_time():
            # Publishes may be skipping their rings on our word: look again soon, rung or not, and at the
            # latest when the promise runs out.
            look_at = min(self.looked_at + self.gather_seconds(), self.promised_until)
            if look_at > now:
                time.sleep(look_at - now)
            self.more_due = True
            return True
        until = min(self.busy_at + self.linger, self.deadline)
        if self.claims_left is not None or now >= until:
            return False
        if not self.listening and not (self.linger and self.become_listener()):
            return False
        record_at = self.finished[0].finished_at + RECORD_DELAY if self.finished else math.inf
        rang = wait_for_ring(min(POLL_WHILE_IDLE, until - now, max(0.001, record_at - now)))
        if rang:
            gather = self.busy_at + self.gather_seconds() - time.monotonic()
            if gather > 0:
                time.sleep(gather)
        if rang or time.monotonic() < record_at:  # not merely woken to record what finished
            self.more_due = True
        return True

    def gather_seconds(self) -> float:
        """How long after its last claim the next waits, so that it takes what came in meanwhile."""
        return BUSY_GATHER_SECONDS if self.last_claimed >= BUSY_ROWS else GATHER_SECONDS

    def out_of_time(self) -> bool:
        return self.claims_left is None and time.monotonic() >= self.deadline

    def start_sends(self) -> None:
        now = time.monotonic()
        slow_after = _slowness.threshold()
        for job in self.running:
            if not job.slow and job.started_at and now - job.started_at >= slow_after:
                job.slow = True
                _slowness.saw(job.subscription_id, now - job.started_at, now)
                self.lane.add(job.subscription_id)
        # A subscription's share counts all its sends in flight: one may still be in a fresh slot.
        in_flight = Counter(job.subscription_id for job in self.running)
        fresh = sum(1 for job in self.running if not job.slow)
        slow_room = (0 if self.out_of_time() else self.slow_slots) - (len(self.running) - fresh)
        give_back: list[Job] = []
        if slow_room > 0:  # winding down, or the lane is full: no new slow sends
            slow_room -= self.top_up_slow_lane(in_flight, slow_room, now)
        claimed_now = False
        while fresh < self.fresh_slots:
            if not self.queued:
                if claimed_now or not self.may_claim():
                    break
                self.claim_jobs(self.batch, exclude=set(self.lane))
                claimed_now = True
                continue
            job = self.queued.popleft()
            subscription = job.subscription_id
            if now > job.claimed_at + self.lease_margin:
                give_back.append(job)  # it could not start in time and would outlive its lease
            elif _slowness.is_slow(subscription, now) or subscription in self.lane or job.retries_a_timeout:
                # Known to be slow (here, or its last attempt timed out): it joins the lane, which claims
                # its rows a few at a time from now on.
                self.lane.add(subscription)
                if slow_room > 0 and in_flight[subscription] < SLOW_PER_SUBSCRIPTION:
                    self.start(job, now, slow=True)
                    in_flight[subscription] += 1
                    slow_room -= 1
                else:
                    give_back.append(job)
            else:
                self.start(job, now, slow=False)
                in_flight[subscription] += 1
                fresh += 1
        if give_back:
            _release_unsent(give_back)
            self.more_due = True  # they are due again at once, for whoever has room

    def top_up_slow_lane(self, in_flight: Counter[str], slow_room: int, now: float) -> int:
        """Claim for each slow subscription only the rows it has room for (none is claimed to be given
        back); returns how many sends it started.

        The least busy and least slow go first: a healthy endpoint that one slow answer (a pause of this
        process, say) sent here gets the next free thread, and its next fast answer takes it out of the
        lane; in set order it waited behind dead endpoints that fill the lane (isolation benchmark).
        """
        started = 0
        for subscription in sorted(self.lane, key=lambda s: (in_flight[s], _slowness.slow_send(s))):
            room = min(SLOW_PER_SUBSCRIPTION - in_flight[subscription], slow_room - started)
            if room <= 0:
                continue
            jobs = self.claim_jobs(room, only=subscription)
            if not jobs:  # nothing due for it: back to the ordinary claims
                self.lane.discard(subscription)
            for job in jobs:
                self.start(job, now, slow=True)
                in_flight[subscription] += 1
                started += 1
        return started

    def claim_jobs(self, limit: int, exclude: set[str] = frozenset(), only: str | None = None) -> list[Job]:
        """Claim and load up to ``limit`` rows; the ordinary claim (no ``only``) queues them, a top-up returns them."""
        if self.claims_left is not None and only is None:
            self.claims_left -= 1
        started = time.monotonic()
        claimed = claim_deliveries(limit, exclude=exclude, only=only)
        if only is None:
            self.looked_at = started
            self.last_claimed = len(claimed)
            if self.promised_until and started >= self.promised_until:
                self.promised_until = 0.0  # kept: this claim saw every row committed before it ran out
            if self.listening and len(claimed) >= PROMISE_ROWS:
                self.keep_promising()
            # Rows of the excluded subscriptions may be due too: the slow lane claims those.
            self.more_due = len(claimed) == limit or bool(exclude)
            if len(claimed) == limit and self.claims_left is None:
                wake(help_wanted=True)  # probably more due: another worker process can claim the next batch
        if not claimed:
            return []
        now = time.monotonic()
        jobs = [Job(delivery, number, claimed_at=now) for delivery, number in claimed]
        self.busy_at = now
        active, inactive = [], []
        for job in jobs:
            (active if job.delivery.subscription.is_active else inactive).append(job)
        _settle_inactive(inactive)
        self.handled += len(inactive)
        if only is None:
            self.queued.extend(active)
        return active

    def keep_promising(self) -> None:
        """Under a stream of events, promise the next look (renewed when half the promise has run)."""
        if self.promised_until - time.monotonic() < PROMISE_SECONDS / 2 and wakeups.promise(
            self.token, PROMISE_SECONDS
        ):
            # Counted from after Redis set the promise's expiry, so our look comes after it.
            self.promised_until = time.monotonic() + PROMISE_SECONDS

    def start(self, job: Job, now: float, slow: bool) -> None:
        """Send on an open connection in this thread if one is idle, else on a send thread (which connects)."""
        job.slow = slow
        self.running.append(job)
        message = message_for(job, self.bodies)
        if self.exchanges.start(job, message):
            job.started_at = time.monotonic()
            return
        _pool().submit(lambda: self.send(job, message), lambda: self.sent(job))

    def send(self, job: Job, message: Message) -> None:
        job.started_at = time.monotonic()  # here, not at submit: a send waiting for a thread is not slow
        job.result = sender.send(message)
        job.took = time.monotonic() - job.started_at

    def sent(self, job: Job) -> None:
        """In the send thread, after its send."""
        self.done.put(job)
        self.exchanges.wake()

    def collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` for sends to end, here or on the threads; take every one that has."""
        for job, result in self.exchanges.wait(timeout):
            job.result = result
            job.took = time.monotonic() - job.started_at
            self.finish(job)
        while True:
            try:
                job = self.done.get_nowait()
            except Empty:
                return
            self.finish(job)

    def finish(self, job: Job) -> None:
        self.running.remove(job)
        if job.result is None:  # the send raised: a bug, not a subscriber's fault; the lease brings it back
            logger.error("send of delivery %s ended without a result", job.delivery.pk)
            return
        now = time.monotonic()
        if job.took < _slowness.threshold():
            self.lane.discard(job.subscription_id)
        _slowness.saw(job.subscription_id, job.took, now)
        job.finished_at = now
        self.finished.append(job)

    def finished_for(self, seconds: float) -> bool:
        return bool(self.finished) and time.monotonic() - self.finished[0].finished_at >= seconds

    def record(self) -> None:
        if self.finished:
            jobs, self.finished = self.finished, []
            record(jobs)
            self.handled += len(jobs)
        # Bodies are shared by the rows of one event claimed together; kept longer they only pile up.
        self.bodies.clear()


def message_for(job: Job, bodies: dict[str, bytes]) -> Message:
    delivery = job.delivery
    event, subscription = delivery.event, delivery.subscription
    if event.id not in bodies:
        bodies[event.id] = sender.encode_body(event.payload())
    return Message(
        url=subscription.url,
        msg_id=event.id,
        event_type=event.type,
        body=bodies[event.id],
        secrets=subscription.signing_secrets(),
        attempt=job.number,
        correlation_id=event.correlation_id or event.id,
    )


def _release_unsent(jobs: list[Job]) -> None:
    """Give back claimed rows that were never sent: due again now, with the attempt number they had.

    Only rows still as this claim left them: one redelivered meanwhile belongs to its new claimer.
    """
    by_number: dict[int, list[str]] = {}
    for job in jobs:
        by_number.setdefault(job.number, []).append(job.delivery.pk)
    for number, ids in by_number.items():
        Delivery.objects.filter(pk__in=ids, status=Status.PENDING, attempt_count=number).update(
            attempt_count=number - 1, next_attempt_at=timezone.now()
        )


def _settle_inactive(jobs: list[Job]) -> None:
    """A row claimed after its subscription went inactive: deleted ones cancel, disabled ones fail."""
    for job in jobs:
        row = Delivery.objects.filter(pk=job.delivery.pk)
        with transaction.atomic():
            if not row.filter(attempt_count=job.number).update(attempt_count=job.number - 1):
                continue
            if job.delivery.subscription.is_deleted:
                row.filter(status=Status.PENDING).update(
                    status=Status.CANCELLED, next_attempt_at=None, completed_at=timezone.now()
                )
            else:
                actions.fail_pending(row, actions.SUBSCRIPTION_DISABLED)


@dataclass
class Aftermath:
    """Subscription bookkeeping, done after the batch commits so the batch never waits on it."""

    succeeded: set[str]
    failed_for_good: list[Delivery]
    gone: list[Delivery]


def record(jobs: list[Job]) -> None:
    """Record a batch in one transaction: the attempts in one insert, the deliveries in one update."""
    if not jobs:
        return
    jobs = sorted(jobs, key=lambda j: j.delivery.pk)
    for job in jobs:
        _move_on(job)
    if connection.vendor == "postgresql":
        ours = _record_postgresql(jobs)
    else:
        with transaction.atomic():
            Attempt.objects.bulk_create(Attempt.from_result(job.delivery.pk, job.number, job.result) for job in jobs)
            ours = save_outcomes(jobs)
    _observe(jobs)
    _settle_subscriptions(_aftermath([job for job in jobs if job.delivery.pk in ours]))


def _move_on(job: Job) -> None:
    """Set the delivery's next state from its attempt: succeeded, due again after a delay, or failed."""
    delivery, result = job.delivery, job.result
    finished_at = result.started_at + timedelta(milliseconds=result.duration_ms)
    delivery.attempt_count, delivery.last_error, delivery.last_status_code = (
        job.number,
        result.error,
        result.status_code,
    )
    if result.success:
        delivery.status, delivery.next_attempt_at, delivery.completed_at = Status.SUCCEEDED, None, finished_at
        return
    delivery.failures += 1
    delay = None if result.status_code == 410 else delivery.retry_delay()
    if delay is not None:
        delivery.next_attempt_at = finished_at + delay
    else:
        delivery.status, delivery.next_attempt_at, delivery.completed_at = Status.FAILED, None, finished_at


def _record_postgresql(jobs: list[Job]) -> set[str]:
    """The attempts and the deliveries' new states in one statement, with a fixed text."""
    rows = []
    for job in jobs:
        delivery, result = job.delivery, job.result
        values = (
            delivery.pk,
            job.number,
            delivery.status,
            _iso(delivery.next_attempt_at),
            _iso(delivery.completed_at),
            delivery.failures,
            result.error,
            result.status_code,
            result.started_at.isoformat(),
            result.duration_ms,
            result.response_body,
            result.success,
        )
        rows.append(dict(zip(RECORD_COLUMNS, values, strict=True)))
    # These sends happened: recorded on a new connection if need be, they are not sent again by their leases.
    params = {"rows": json.dumps(rows), "pending": Status.PENDING.value}
    doing = f"recording {len(jobs)} attempts"
    # Planned at each run, not once per connection: PostgreSQL's generic plan of it, made while the table
    # looked small (a new or emptied one), hash-joined each batch to every delivery, read through
    # "delivery_status" (a drain turns sequential scans off) until an ANALYZE: 3,600-7,800 rows a record of
    # about 100 in the end to end benchmark, and the whole table as it grew. Planning each record costs
    # less than that: PostgreSQL 0.38 / 0.36 / 0.39 -> 0.36 / 0.35 / 0.37 s of CPU per 1,000 deliveries
    # (measured planned by Django's cursor; now bound on the server, see _rows).
    sql, again = RECORD_SQL_POSTGRESQL, RECORD_AGAIN_SQL_POSTGRESQL
    return {pk for (pk,) in _fetched(doing, sql, params, again=again, planned=False)}


def _fetched(doing: str, sql: str, params: dict, again: str | None = None, planned: bool = True) -> list[tuple]:
    """The rows of a drain's statement. If PostgreSQL ended the session (a restart, a failover,
    pg_terminate_backend), once more on a new connection (``again``, or the same statement)."""
    try:
        return _rows(sql, params, planned)
    except OperationalError:
        if not _reconnected():
            raise
        logger.warning("lost the database connection while %s; again on a new one", doing)
        return _rows(again or sql, params, planned)


def _rows(sql: str, params: dict, planned: bool = True) -> list[tuple]:
    """With ``planned``, PostgreSQL plans the statement once per connection; without, at each run, with the
    table's size at that moment. Parameters are bound on the server either way: Django's own cursor would
    write a record's JSON into the statement's text, and the worker's RSS grew 2.2-2.8 % over the soak
    benchmark instead of 0.2-0.3 %."""
    with planned_once() as cursor:
        if planned:
            cursor.execute(sql, params)
        else:
            with cursor.db.wrap_database_errors:
                cursor.cursor.execute(sql, params, prepare=False)
        return cursor.fetchall()


def _reconnected() -> bool:
    """After a database error: a new connection if the one we had no longer works (True), else False. Not
    inside a transaction, whose work went with the old connection."""
    if connection.in_atomic_block or connection.is_usable():
        return False
    connection.close()
    connection.ensure_connection()
    return True


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def save_outcomes(jobs: list[Job]) -> set[str]:
    """Write every job's new state where the row is still ours (pending, same attempt number).

    Returns the ids written: a row a late worker no longer owns (redelivered, disabled, cancelled)
    keeps the newer state.
    """
    cast = (lambda kind: f"CAST(%s AS {kind})") if connection.vendor == "postgresql" else (lambda kind: "%s")
    row = f"(%s, %s, %s, {cast('timestamptz')}, {cast('timestamptz')}, %s, {cast('text')}, {cast('smallint')})"
    params: list = []
    for job in jobs:
        d = job.delivery
        params += [d.pk, job.number, d.status, _db_time(d.next_attempt_at), _db_time(d.completed_at)]
        params += [d.failures, d.last_error, d.last_status_code]
    sql = SAVE_OUTCOMES_SQL.format(rows=", ".join([row] * len(jobs)))
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, Status.PENDING])
        return {pk for (pk,) in cursor.fetchall()}


def _db_time(value: datetime | None):
    return connection.ops.adapt_datetimefield_value(value) if value else None


def _aftermath(jobs: list[Job]) -> Aftermath:
    aftermath = Aftermath(set(), [], [])
    recently = timezone.now() - SUCCESS_MARK_EVERY
    for job in jobs:
        delivery = job.delivery
        if delivery.status == Status.SUCCEEDED:
            # A subscription with no failures and a success marked moments ago needs no write.
            subscription = delivery.subscription
            marked = subscription.last_success_at and subscription.last_success_at > recently
            if subscription.consecutive_failures or not marked:
                aftermath.succeeded.add(delivery.subscription_id)
        elif delivery.status == Status.FAILED:
            (aftermath.gone if delivery.last_status_code == 410 else aftermath.failed_for_good).append(delivery)
    return aftermath


def _settle_subscriptions(aftermath: Aftermath) -> None:
    if aftermath.succeeded:
        Subscription.objects.filter(id__in=sorted(aftermath.succeeded)).update(
            consecutive_failures=0, last_success_at=timezone.now()
        )
    for delivery in aftermath.gone:
        actions.disable_subscription(delivery.subscription, GONE_REASON)
    for delivery in aftermath.failed_for_good:
        _count_failure(delivery.subscription)
    for delivery in aftermath.gone + aftermath.failed_for_good:
        alerts.delivery_failed(delivery)


def _count_failure(subscription: Subscription) -> None:
    Subscription.objects.filter(pk=subscription.pk).update(consecutive_failures=F("consecutive_failures") + 1)
    subscription.refresh_from_db(fields=["consecutive_failures", "is_active"])
    limit = settings.WEBHOOK_DISABLE_AFTER
    if subscription.is_active and limit and subscription.consecutive_failures >= limit:
        actions.disable_subscription(subscription, f"{subscription.consecutive_failures} consecutive failed deliveries")


def _observe(jobs: list[Job]) -> None:
    """One log line per attempt, and the batch's metrics (docs/api.md)."""
    counts: Counter[tuple[str, str]] = Counter()
    latencies = []
    logging_attempts = logger.isEnabledFor(logging.INFO)
    for job in jobs:
        result = job.result
        outcome = "success" if result.success else "failure"
        counts[outcome, metrics.status_class(result.status_code)] += 1
        if result.success:
            latency = job.delivery.completed_at - job.delivery.event.created_at
            latencies.append(max(0.0, latency.total_seconds()))
        if logging_attempts:
            _log_attempt(job, outcome)
    metrics.observe_many(metrics.ATTEMPT_DURATION, [job.result.duration_ms / 1000 for job in jobs])
    metrics.observe_many(metrics.DELIVERY_LATENCY, latencies)
    for labels, count in counts.items():
        metrics.ATTEMPTS.labels(*labels).inc(count)


def _log_attempt(job: Job, outcome: str) -> None:
    delivery, result = job.delivery, job.result
    url = sender.safe_url(delivery.subscription.url)
    correlation_id = delivery.event.correlation_id or "-"
    fields = {
        "event": delivery.event_id,
        "delivery": delivery.id,
        "subscription": delivery.subscription_id,
        "attempt": job.number,
        "outcome": outcome,
        "status": result.status_code,
        "duration_ms": result.duration_ms,
        "error": result.error,
        "url": url,
        "correlation_id": correlation_id,
    }
    logger.info(
        f"attempt event={delivery.event_id} delivery={delivery.id} subscription={delivery.subscription_id} "
        f"attempt={job.number} outcome={outcome} status={result.status_code} duration_ms={result.duration_ms} "
        f"error={result.error!r} url={url} correlation_id={correlation_id}",
        extra=fields,
    )


def sweep(max_drains: int = 4) -> int:
    """Wake workers for every due row: retries, expired leases, and anything whose wake-up was lost."""
    from deliveries.tasks import drain as drain_task

    limit = settings.WEBHOOK_BATCH_SIZE * max_drains
    due = Delivery.objects.due().values("id")[:limit].count()
    drains = -(-due // settings.WEBHOOK_BATCH_SIZE)
    for _ in range(drains):
        drain_task.delay()
    return due
