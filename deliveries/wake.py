"""Waking workers. The broker only says "look at the rows now"; a lost wake-up costs latency, not data."""

import logging

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger("hookrelay.deliveries")
WAKE_KEY = "hookrelay:wake"
WAKE_TTL = 5


def wake() -> None:
    """Ask a worker to drain due deliveries; merges wake-ups while one is already queued (with Redis)."""
    from deliveries.tasks import drain

    try:
        if settings.REDIS_URL and not cache.add(WAKE_KEY, 1, timeout=WAKE_TTL):
            return
        drain.delay()
    except Exception:  # the sweeper will find the rows; never fail a committed publish over a wake-up
        logger.warning("could not wake a worker; the sweeper will pick the deliveries up", exc_info=True)


def clear_wake() -> None:
    """Cleared before claiming, so a wake-up sent during the claim is never merged away."""
    if settings.REDIS_URL:
        try:
            cache.delete(WAKE_KEY)
        except Exception:
            logger.warning("could not clear the wake-up flag", exc_info=True)
