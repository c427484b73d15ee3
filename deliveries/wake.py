"""Waking workers. The broker only says "look at the rows now"; a lost wake-up costs latency, not data.

With Redis, a wake-up does two things in one round trip: it rings a doorbell that a lingering drain
is blocked on (the fast path, no task needed), and it queues a drain task unless one is already
queued (``SET NX``, cleared when a drain starts, so none is lost). Without Redis it queues a task.
"""

import logging
import os

import redis
from django.conf import settings

from config.redis_script import Script

logger = logging.getLogger("hookrelay.deliveries")
WAKE_KEY = "hookrelay:wake"
DOORBELL_KEY = "hookrelay:doorbell"
WAKE_TTL = 5
# The doorbell holds one ring at most: a drain that wakes up looks at every due row anyway.
RING_SCRIPT = """
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 0)
redis.call('EXPIRE', KEYS[2], ARGV[1])
return redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
"""


class _Redis:
    """One client per process, made after fork; its read timeout outlasts the longest wait for a ring."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=2)
        # The same call on every publish: packed once (issue 6).
        self.ring = Script(settings.REDIS_URL, RING_SCRIPT, timeout=2)
        self.ring_call = self.ring.pack([WAKE_KEY, DOORBELL_KEY], [WAKE_TTL])


_redis: _Redis | None = None


def _client() -> _Redis:
    global _redis
    if _redis is None or _redis.pid != os.getpid():
        _redis = _Redis()
    return _redis


def wake() -> None:
    """Ask a worker to drain due deliveries; merges wake-ups while one is already queued (with Redis)."""
    from deliveries.tasks import drain

    try:
        if settings.REDIS_URL:
            r = _client()
            if r.ring.run(r.ring_call) is None:  # a wake-up is queued already
                return
        drain.delay()
    except Exception:  # the sweeper will find the rows; never fail a committed publish over a wake-up
        logger.warning("could not wake a worker; the sweeper will pick the deliveries up", exc_info=True)


def clear_wake() -> None:
    """Cleared before claiming, so a wake-up sent during the claim is never merged away."""
    if settings.REDIS_URL:
        try:
            _client().client.delete(WAKE_KEY)
        except Exception:
            logger.warning("could not clear the wake-up flag", exc_info=True)


def wait_for_ring(seconds: float) -> bool:
    """Block until a wake-up rings (True) or ``seconds`` pass (False). Without Redis, never waits."""
    if not settings.REDIS_URL or seconds <= 0:
        return False
    try:
        return _client().client.blpop([DOORBELL_KEY], timeout=seconds) is not None
    except Exception:
        logger.warning("could not wait for a wake-up; this drain ends here", exc_info=True)
        return False
