"""Rate limits for /api/ and /oauth/token/: per client when a valid token is shown, else per IP.

Fixed windows counted in Redis with one atomic INCR-and-expire script per request, so every web
process on every host shares one count and a window never lets more than the limit through. Without
Redis the local cache counts per process. If Redis is down the API keeps serving (fails open).
"""

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
INCR_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


@dataclass(frozen=True)
class Rate:
    limit: int
    window: int

    def __str__(self) -> str:
        return f"{self.limit} requests per {self.window} s"


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


class Counter:
    """Counts hits per key and window: Redis when configured, the local cache otherwise."""

    def __init__(self) -> None:
        self._script: Script | None = None
        self._last_warning = 0.0

    def hit(self, key: str, rate: Rate) -> Decision | None:
        window_index = int(time.time()) // rate.window
        full_key = f"hookrelay:rl:{key}:{rate.window}:{window_index}"
        try:
            count = self._incr(full_key, rate.window)
        except (redis.RedisError, OSError):
            self._warn()
            return None
        reset = (window_index + 1) * rate.window
        return Decision(count <= rate.limit, rate.limit, max(0, rate.limit - count), reset)

    def _incr(self, key: str, window: int) -> int:
        if settings.REDIS_URL:
            if self._script is None:
                self._script = Script(settings.REDIS_URL, INCR_SCRIPT, timeout=0.5)
            return int(self._script([key], [window + 1]))
        cache.add(key, 0, timeout=window + 1)
        return cache.incr(key)

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
