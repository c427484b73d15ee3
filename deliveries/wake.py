"""Waking workers. The broker only says "look at the rows now"; a lost wake-up costs latency, not data.

With Redis, a wake-up does two things in one round trip: it rings a doorbell that a lingering drain
is blocked on (the fast path, no task needed), and it queues a drain task unless one is already
queued (``SET NX``, cleared when a drain starts, so none is lost) or a drain is listening. Without
Redis it queues a task.

One drain at a time is the listener (``LISTENER_KEY``, its token, refreshed while it lives): it will
be back at the doorbell within moments, so a publish only rings. Under a steady stream of events
that keeps the other worker processes out of the way, and the listener claims what arrived since
its last claim at once; four drains sharing the stream claimed 3.3 rows at a time, one in five
claims empty. A backlog still spreads over every process: a claim that comes back full
queues another drain whether or not someone listens.

A listener that keeps finding rows at every look promises to look again after a moment, rung or not
(``PROMISE_KEY``, expiring with the promise). A publish's ring learns the promise's time left, and that
process's later publishes skip their rings until it runs out (``wake_after_publish``): each committed
before the listener's next look, which will see it. Under a stream of events that saves a Redis round
trip per publish. A listener that stops before its promise runs out still keeps it (``Drain``); one
killed meanwhile costs those rows latency until the sweeper, as any lost wake-up does.
"""

import logging
import os
import time

import redis
from django.conf import settings

from config.redis_script import Script

logger = logging.getLogger("hookrelay.deliveries")
WAKE_KEY = "hookrelay:wake"
DOORBELL_KEY = "hookrelay:doorbell"
LISTENER_KEY = "hookrelay:listener"
PROMISE_KEY = "hookrelay:promise"
WAKE_TTL = 5
# A listener refreshes its key this often; one that died without letting go (kill -9) keeps publishes
# from queuing drain tasks for LISTENER_TTL at most (the sweeper queues its drains regardless).
LISTENER_TTL = 2
LISTENER_REFRESH = 0.5
# The doorbell holds one ring at most: a drain that wakes up looks at every due row anyway.
# ARGV[2] "1" queues a task even with a listener: a full claim asks for help with a backlog.
# Returns QUEUE if the caller must queue a drain task; with a listener, the milliseconds its promise
# has left (-2: none); else nil (a task is queued already).
RING_SCRIPT = """
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 0)
redis.call('EXPIRE', KEYS[2], ARGV[1])
if ARGV[2] == '0' and redis.call('EXISTS', KEYS[3]) == 1 then return redis.call('PTTL', KEYS[4]) end
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 'queue' end
return false
"""
QUEUE = b"queue"
# Only the listener promises, for ARGV[2] milliseconds: 1 if it did.
PROMISE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Becomes (or stays) the listener unless another drain is: 1 if this token holds the key now.
LISTEN_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# Lets go if this token holds the key, and takes a ring that came meanwhile: it was meant for us. Its
# promise is withdrawn so no more publishes learn it (those that did are still owed the look).
UNLISTEN_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return redis.call('LPOP', KEYS[2])
"""


class _Redis:
    """One client per process, made after fork; its read timeout outlasts the longest wait for a ring."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=2)
        # The same call on every publish: packed once.
        self.ring = Script(settings.REDIS_URL, RING_SCRIPT, timeout=2)
        keys = [WAKE_KEY, DOORBELL_KEY, LISTENER_KEY, PROMISE_KEY]
        self.ring_call = self.ring.pack(keys, [WAKE_TTL, 0])
        self.help_call = self.ring.pack(keys, [WAKE_TTL, 1])
        self.listen = Script(settings.REDIS_URL, LISTEN_SCRIPT, timeout=2)
        self.unlisten = Script(settings.REDIS_URL, UNLISTEN_SCRIPT, timeout=2)
        self.promise = Script(settings.REDIS_URL, PROMISE_SCRIPT, timeout=2)
        self.promised_until = 0.0  # monotonic: a listener looks again after this (see wake_after_publish)


_redis: _Redis | None = None


def _client() -> _Redis:
    global _redis
    if _redis is None or _redis.pid != os.getpid():
        _redis = _Redis()
    return _redis


def wake(help_wanted: bool = False) -> None:
    """Ask a worker to drain due deliveries; merges wake-ups while one is already queued or, unless
    ``help_wanted`` (more is due than one drain takes at a time), a drain is listening (with Redis)."""
    _wake(help_wanted=help_wanted, trust_promise=False)


def wake_after_publish() -> None:
    """``wake()`` for rows that have just been committed: nothing to do while a listener's promise to look
    again covers this moment. A ring that finds a promise remembers when it runs out."""
    _wake(help_wanted=False, trust_promise=True)


def _wake(*, help_wanted: bool, trust_promise: bool) -> None:
    from deliveries.tasks import drain

    try:
        if settings.REDIS_URL:
            r = _client()
            # Taken before the ring: the promise's time left is counted from a moment at or after this one.
            now = time.monotonic()
            if trust_promise and now < r.promised_until:
                return
            reply = r.ring.run(r.help_call if help_wanted else r.ring_call)
            if reply != QUEUE:  # someone will look
                if trust_promise and isinstance(reply, int) and reply > 0:
                    r.promised_until = now + reply / 1000
                return
        drain.delay()
    except Exception:  # the sweeper will find the rows; never fail a committed publish over a wake-up
        logger.warning("could not wake a worker; the sweeper will pick the deliveries up", exc_info=True)


def promise(token: str, seconds: float) -> bool:
    """The listener (``token``) promises to look at the rows again after ``seconds``, rung or not; False if
    it is not the listener (or without Redis): then nobody relies on it."""
    if not settings.REDIS_URL:
        return False
    try:
        return _client().promise([LISTENER_KEY, PROMISE_KEY], [token, max(1, int(seconds * 1000))]) == 1
    except Exception:
        logger.warning("could not promise to look again; publishes keep ringing", exc_info=True)
        return False


def clear_wake() -> None:
    """Cleared before claiming, so a wake-up sent during the claim is never merged away."""
    if settings.REDIS_URL:
        try:
            _client().client.delete(WAKE_KEY)
        except Exception:
            logger.warning("could not clear the wake-up flag", exc_info=True)


def listen(token: str) -> bool:
    """Become, or stay, the listener; False if another drain is, or without Redis (or if it fails)."""
    if not settings.REDIS_URL:
        return False
    try:
        r = _client()
        return r.listen([LISTENER_KEY], [token, LISTENER_TTL]) == 1
    except Exception:
        logger.warning("could not register as the listening drain", exc_info=True)
        return False


def stop_listening(token: str) -> bool:
    """Stop being the listener; True if the doorbell rang meanwhile (the caller must see to it)."""
    try:
        r = _client()
        return r.unlisten([LISTENER_KEY, DOORBELL_KEY, PROMISE_KEY], [token]) is not None
    except Exception:  # the key expires by itself; a ring we cannot read is assumed
        logger.warning("could not stop listening for wake-ups", exc_info=True)
        return True


def wait_for_ring(seconds: float) -> bool:
    """Block until a wake-up rings (True) or ``seconds`` pass (False). Without Redis, never waits."""
    if not settings.REDIS_URL or seconds <= 0:
        return False
    try:
        return _client().client.blpop([DOORBELL_KEY], timeout=seconds) is not None
    except Exception:
        logger.warning("could not wait for a wake-up; this drain ends here", exc_info=True)
        return False
