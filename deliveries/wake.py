"""Waking workers. The broker only says "look at the rows now"; a lost wake-up costs latency, not data.

With Redis, a wake-up does two things in one round trip: it rings a doorbell that a lingering drain
is blocked on (the fast path, no task needed), and it queues a drain task unless one is already
queued (``SET NX``, cleared when a drain starts, so none is lost). Without Redis it queues a task.
"""

import hashlib
import logging
import os
import threading

import redis
from django.conf import settings
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError

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


class Ringer:
    """The ring on a connection of its own, packed once: every publish sends the same bytes.

    redis-py packs the command, takes a connection from its pool and runs its retry machinery on every
    call: a quarter of ``publish()``'s CPU (issue 6). This writes the packed EVALSHA and reads the one
    reply. A script Redis has forgotten (a restart, ``SCRIPT FLUSH``) is loaded and the ring sent again;
    a broken connection is reopened once.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.connection = client.connection
        self.lock = threading.Lock()  # publishing threads of one process share the connection
        sha = hashlib.sha1(RING_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self.packed = self.connection.pack_command("EVALSHA", sha, 2, WAKE_KEY, DOORBELL_KEY, WAKE_TTL)

    def __call__(self) -> bool:
        """Ring; True if no wake-up was queued yet (the caller queues a drain task)."""
        with self.lock:
            try:
                return self._send()
            except NoScriptError:
                self.client.script_load(RING_SCRIPT)
            except (ConnectionError, TimeoutError):
                self.connection.disconnect()
            return self._send()

    def _send(self) -> bool:
        self.connection.send_packed_command(self.packed, check_health=False)
        return self.connection.read_response() is not None


class _Redis:
    """One client per process, made after fork; its read timeout outlasts the longest wait for a ring."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=2)
        self.ring = Ringer(
            redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=2, single_connection_client=True
            )
        )


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
            if not r.ring():
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
