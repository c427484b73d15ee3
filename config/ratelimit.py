"""Rate limits for /api/ and /oauth/token/: per client when a valid token is shown, else per IP.

Fixed windows counted in Redis with an atomic increment-and-expire script, so every web process on every
host shares one count and a window never lets more than the limit through. Without Redis the local cache
counts per process. If Redis is down the API keeps serving (fails open).

Under a generous limit a process takes its counts from Redis a few at a time (``Counter.batch``): the call
per request was about 5 % of an ingest request's instructions, besides Redis's own work. A batch
is numbered like the requests it counts (the first gets the count after Redis's previous one), so
``X-RateLimit-Remaining`` still counts down and the limit is still never exceeded. A count taken but not
used in its window is lost to the client: the batch is at most 1/256 of the limit and single counts are
taken near it, so that can only happen to counts taken early and left in a process that stopped getting
the client's requests.
"""

import functools
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse

from config import metrics
from config.redis_script import Script

logger = logging.getLogger("hookrelay.ratelimit")
LIMITED_PATHS = ("/api/", "/oauth/token/")
UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
# Adds ARGV[2] counts, or only 1 once fewer than ARGV[3] times that many are left under the limit ARGV[4];
# returns the new count and how many were added.
INCR_SCRIPT = """
local want = tonumber(ARGV[2])
if want > 1 and (tonumber(redis.call('GET', KEYS[1]) or '0') + want * tonumber(ARGV[3])) > tonumber(ARGV[4]) then
  want = 1
end
local count = redis.call('INCRBY', KEYS[1], want)
if count == want then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, want}
"""
# A batch is at most this share of the limit (so at most 1/256 of it can be left unused in a process) ...
BATCH_SHARE = 256
# ... and at most this many counts; single counts are taken once fewer than NEAR_BATCHES batches are left.
MAX_BATCH = 32
NEAR_BATCHES = 8


@dataclass(frozen=True)
class Rate:
    limit: int
    window: int

    def __str__(self) -> str:
        return f"{self.limit} requests per {self.window} s"


@functools.lru_cache(maxsize=256)  # read on every API request, from a setting or a client's override
def parse_rate(text: str) -> Rate:
    match = RATE.match(text.lower())
    if not match or match.group(2) not in UNITS or int(match.group(1)) < 1:
        raise ImproperlyConfigured(f"a rate is N/sec, N/min or N/hour, not {text!r}")
    return Rate(int(match.group(1)), UNITS[match.group(2)])


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int


@dataclass
class Batch:
    """Counts this process took from Redis for one key and window: ``next`` to ``last``, in Redis's numbering."""

    window_index: int
    next: int
    last: int


class Counter:
    """Counts hits per key and window: Redis when configured, the local cache otherwise."""

    def __init__(self) -> None:
        self._script: Script | None = None
        self._last_warning = 0.0
        self._batches: dict[str, Batch] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, rate: Rate) -> Decision | None:
        window_index = int(time.time()) // rate.window
        try:
            count = self._count(f"{key}:{rate.window}", window_index, rate)
        except (redis.RedisError, OSError):
            self._warn()
            return None
        reset = (window_index + 1) * rate.window
        return Decision(count <= rate.limit, rate.limit, max(0, rate.limit - count), reset)

    @staticmethod
    def batch(rate: Rate) -> int:
        """How many counts to take from Redis at a time under ``rate``: 1 below 512 requests a window."""
        return max(1, min(MAX_BATCH, rate.limit // BATCH_SHARE))

    def _count(self, slot: str, window_index: int, rate: Rate) -> int:
        """This request's count in ``slot``'s window: from this process's batch while it lasts, else Redis's."""
        full_key = f"hookrelay:rl:{slot}:{window_index}"
        if not settings.REDIS_URL:
            cache.add(full_key, 0, timeout=rate.window + 1)
            return cache.incr(full_key)
        # Held over the call to Redis (the script's own lock serialises this process's calls anyway): two
        # threads that run out together take one batch, not two with the first's rest left unused.
        with self._lock:
            batch = self._batches.get(slot)
            if batch is not None and batch.window_index == window_index and batch.next <= batch.last:
                batch.next += 1
                return batch.next - 1
            if self._script is None:
                self._script = Script(settings.REDIS_URL, INCR_SCRIPT, timeout=0.5)
            count, taken = self._script([full_key], [rate.window + 1, self.batch(rate), NEAR_BATCHES, rate.limit])
            first = count - taken + 1
            if taken > 1:
                if len(self._batches) > 10_000:
                    self._batches.clear()
                self._batches[slot] = Batch(window_index, first + 1, count)
            return first

    def forget_batches(self) -> None:
        """Drop this process's unused counts: for when the store's counts were deleted (a FLUSHDB, a test)."""
        with self._lock:
            self._batches.clear()

    def _warn(self) -> None:
        if time.monotonic() - self._last_warning > 60:
            self._last_warning = time.monotonic()
            logger.warning("rate-limit store unreachable: serving without limits", exc_info=True)


counter = Counter()


class TokenClients:
    """Bearer token -> (client key, rate override), remembered briefly so a request costs no extra query."""

    TTL = 30.0

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, token: str) -> tuple[str, str] | None:
        checksum = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(checksum)
        if cached and now - cached[0] < self.TTL:
            return cached[1]
        found = self._query(checksum)
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[checksum] = (now, found)
        return found

    def _query(self, checksum: str) -> tuple[str, str] | None:
        from django.utils import timezone
        from oauth2_provider.models import AccessToken

        row = (
            AccessToken.objects.filter(token_checksum=checksum, expires__gt=timezone.now())
            .values_list("application_id", "application__api_client__rate_limit")
            .first()
        )
        return (f"client:{row[0]}", row[1] or "") if row else None


token_clients = TokenClients()


def identify(request: HttpRequest) -> tuple[str, Rate]:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and len(header) < 1000:
        found = token_clients.lookup(header[7:].strip())
        if found:
            key, override = found
            return key, parse_rate(override) if override else parse_rate(settings.API_RATE_LIMIT)
    return f"ip:{request.META.get('REMOTE_ADDR', '')}", parse_rate(settings.API_RATE_LIMIT_ANON)


class RateLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        # A malformed rate fails at start, not on every request.
        parse_rate(settings.API_RATE_LIMIT)
        parse_rate(settings.API_RATE_LIMIT_ANON)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(LIMITED_PATHS):
            return self.get_response(request)
        key, rate = identify(request)
        decision = counter.hit(key, rate)
        if decision is None:
            return self.get_response(request)
        response = self.get_response(request) if decision.allowed else too_many(decision, rate)
        response["X-RateLimit-Limit"] = str(decision.limit)
        response["X-RateLimit-Remaining"] = str(decision.remaining)
        response["X-RateLimit-Reset"] = str(decision.reset)
        return response


def too_many(decision: Decision, rate: Rate) -> HttpResponse:
    metrics.RATE_LIMITED.inc()
    retry_after = max(1, math.ceil(decision.reset - time.time()))
    response = JsonResponse({"detail": f"Rate limit exceeded ({rate}). Try again in {retry_after} s."}, status=429)
    response["Retry-After"] = str(retry_after)
    return response
