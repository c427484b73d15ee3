"""CONTRACT.md sections 1 and 3, issue 5: rate limits per client and per IP, counted atomically across processes."""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.test import Client
from rest_framework.test import APIClient

from config import ratelimit
from config.ratelimit import Rate, parse_rate
from subscriptions.models import ApiClient
from tests.conftest import Api, basic_auth, database_url
from tests.processes import Servers, Web, free_port, web_env
from webhooks.models import Event

HOUR = 3600
ELSEWHERE = "203.0.113.7"


@pytest.fixture(autouse=True)
def counts_start_at_zero() -> None:
    """Counts outlive a test (in Redis, in this process's cache or its batches): every test here starts from none."""
    ratelimit.counter.forget_batches()
    if settings.REDIS_URL:
        store = redis.Redis.from_url(settings.REDIS_URL)
        for key in store.scan_iter("hookrelay:rl:*"):
            store.delete(key)
    else:
        cache.clear()


@pytest.fixture(autouse=True)
def fast_secret_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def wait_for_window_room(window: int, room: float) -> None:
    """Windows are fixed: start with at least ``room`` seconds of this one left, so no test straddles two."""
    left = window - time.time() % window
    if left < room:
        time.sleep(left + 0.01)


def window_end(window: int) -> int:
    return (int(time.time()) // window + 1) * window


def anonymous(address: str = ELSEWHERE) -> APIClient:
    return APIClient(HTTP_HOST="localhost", REMOTE_ADDR=address)


def headers(response: Any) -> tuple[str | None, str | None, str | None]:
    return response.get("X-RateLimit-Limit"), response.get("X-RateLimit-Remaining"), response.get("X-RateLimit-Reset")


# --- Headers and refusals ---


def test_every_api_response_counts_down_the_remaining_requests_to_the_window_end(
    settings: Any, platform_api: Api
) -> None:
    settings.API_RATE_LIMIT = "5/hour"
    wait_for_window_room(HOUR, 30)
    end = str(window_end(HOUR))

    responses = [platform_api.get("/api/v1/subscriptions/") for _ in range(5)]

    assert [r.status_code for r in responses] == [200] * 5
    assert [headers(r) for r in responses] == [("5", str(left), end) for left in (4, 3, 2, 1, 0)]


def test_error_answers_and_header_versioned_paths_are_counted_with_headers_too(
    settings: Any, platform_api: Api
) -> None:
    settings.API_RATE_LIMIT = "10/hour"
    wait_for_window_room(HOUR, 30)

    not_found = platform_api.get("/api/v1/subscriptions/sub_nope/")
    invalid = platform_api.post("/api/v1/events/", {"type": "Not A Type", "data": {}})
    by_header = platform_api.get("/api/subscriptions/", HTTP_ACCEPT="application/vnd.hookrelay+json; version=1")

    assert [r.status_code for r in (not_found, invalid, by_header)] == [404, 400, 200]
    assert [r["X-RateLimit-Remaining"] for r in (not_found, invalid, by_header)] == ["9", "8", "7"]


def test_over_the_limit_the_answer_is_429_in_json_with_retry_after_and_never_a_negative_remaining(
    settings: Any, platform_api: Api
) -> None:
    settings.API_RATE_LIMIT = "2/hour"
    wait_for_window_room(HOUR, 30)
    end = window_end(HOUR)
    platform_api.get("/api/v1/subscriptions/")
    platform_api.get("/api/v1/subscriptions/")

    refused = [platform_api.get("/api/v1/subscriptions/") for _ in range(3)]

    for response in refused:
        assert response.status_code == 429
        assert response["Content-Type"] == "application/json"
        assert "rate limit" in response.json()["detail"].lower()
        assert headers(response) == ("2", "0", str(end))
        retry_after = int(response["Retry-After"])
        assert 1 <= retry_after <= HOUR
        assert abs(retry_after - (end - time.time())) <= 2
        assert response["X-Correlation-Id"]


def test_retry_after_is_at_least_one_second_even_at_the_very_end_of_a_window(settings: Any, platform_api: Api) -> None:
    settings.API_RATE_LIMIT = "1/sec"
    # Late in a one-second window the time left rounds up to 1, never down to 0.
    time.sleep(1 - time.time() % 1 + 0.6)
    platform_api.get("/api/v1/subscriptions/")

    refused = platform_api.get("/api/v1/subscriptions/")

    assert refused.status_code == 429
    assert refused["Retry-After"] == "1"


def test_a_refused_request_never_reaches_the_view(settings: Any, platform_api: Api) -> None:
    settings.API_RATE_LIMIT = "1/hour"
    wait_for_window_room(HOUR, 30)
    assert platform_api.post("/api/v1/events/", {"type": "order.created", "data": {"n": 1}}).status_code == 202

    refused = platform_api.post("/api/v1/events/", {"type": "order.created", "data": {"n": 2}})

    assert refused.status_code == 429
    assert list(Event.objects.values_list("data", flat=True)) == [{"n": 1}]


def test_the_limit_resets_when_the_window_ends(settings: Any, platform_api: Api) -> None:
    settings.API_RATE_LIMIT = "3/sec"
    wait_for_window_room(1, 0.9)
    first = [platform_api.get("/api/v1/subscriptions/") for _ in range(4)]
    assert [r.status_code for r in first] == [200, 200, 200, 429]
    reset = int(first[0]["X-RateLimit-Reset"])
    assert {r["X-RateLimit-Reset"] for r in first} == {str(reset)}

    time.sleep(max(0.0, reset - time.time()) + 0.01)
    again = platform_api.get("/api/v1/subscriptions/")

    assert again.status_code == 200
    assert again["X-RateLimit-Remaining"] == "2"
    assert int(again["X-RateLimit-Reset"]) > reset


# --- Counts taken a batch at a time ---


def client_count_key(api: Api, window: int) -> str:
    """The Redis key counting ``api``'s requests in the current window of ``window`` seconds."""
    from oauth2_provider.models import Application

    application = Application.objects.get(client_id=api.client_id)
    return f"hookrelay:rl:client:{application.pk}:{window}:{int(time.time()) // window}"


@pytest.mark.services
def test_under_a_generous_limit_a_process_takes_its_counts_from_redis_a_batch_at_a_time(
    settings: Any, platform_api: Api
) -> None:
    settings.API_RATE_LIMIT = "8192/hour"  # batches of 32
    wait_for_window_room(HOUR, 30)
    store = redis.Redis.from_url(settings.REDIS_URL)

    responses = [platform_api.get("/api/v1/subscriptions/") for _ in range(40)]

    assert [r.status_code for r in responses] == [200] * 40
    # Numbered as if counted one by one ...
    assert [int(r["X-RateLimit-Remaining"]) for r in responses] == list(range(8191, 8151, -1))
    # ... from two calls to Redis, each taking 32 counts.
    assert int(store.get(client_count_key(platform_api, HOUR))) == 64


@pytest.mark.services
def test_near_the_limit_counts_are_taken_one_at_a_time_and_the_limit_is_reached_exactly(
    settings: Any, platform_api: Api
) -> None:
    settings.API_RATE_LIMIT = "8192/hour"
    wait_for_window_room(HOUR, 30)
    store = redis.Redis.from_url(settings.REDIS_URL)
    key = client_count_key(platform_api, HOUR)
    store.set(key, 8192 - 100, ex=HOUR)  # other processes have counted all but 100

    responses = [platform_api.get("/api/v1/subscriptions/") for _ in range(101)]

    assert [r.status_code for r in responses] == [200] * 100 + [429]
    assert [r["X-RateLimit-Remaining"] for r in responses] == [str(left) for left in range(99, -1, -1)] + ["0"]
    assert int(store.get(key)) == 8193  # one count per request: none left unused in this process


@pytest.mark.services
def test_processes_taking_batches_hand_out_every_count_under_the_limit_exactly_once(settings: Any) -> None:
    wait_for_window_room(HOUR, 30)
    processes = [ratelimit.Counter(), ratelimit.Counter(), ratelimit.Counter()]
    rate = Rate(4096, HOUR)  # batches of 16, single counts in the last 128
    assert ratelimit.Counter.batch(rate) == 16

    decisions = [processes[i % 7 % 3].hit("client:shared", rate) for i in range(4200)]

    allowed = [d for d in decisions if d.allowed]
    assert sorted(d.remaining for d in allowed) == list(range(4096))
    assert {d.remaining for d in decisions if not d.allowed} == {0}
    window_index = int(time.time()) // HOUR
    counted = redis.Redis.from_url(settings.REDIS_URL).get(f"hookrelay:rl:client:shared:{HOUR}:{window_index}")
    assert int(counted) == 4200  # every count taken was used


@pytest.mark.services
def test_threads_of_one_process_that_run_out_together_take_one_batch_between_them(settings: Any) -> None:
    wait_for_window_room(HOUR, 30)
    counter = ratelimit.Counter()
    rate = Rate(8192, HOUR)  # batches of 32
    start = threading.Barrier(8)

    def hits(_: int) -> list[int]:
        start.wait(timeout=30)
        return [counter.hit("client:threads", rate).remaining for _ in range(100)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        remaining = [left for one in pool.map(hits, range(8)) for left in one]

    assert sorted(remaining) == list(range(8192 - 800, 8192))
    window_index = int(time.time()) // HOUR
    counted = redis.Redis.from_url(settings.REDIS_URL).get(f"hookrelay:rl:client:threads:{HOUR}:{window_index}")
    assert int(counted) == 800  # 25 batches: none taken while another thread was taking one


@pytest.mark.parametrize(("limit", "batch"), [(1, 1), (511, 1), (512, 2), (1000, 3), (8192, 32), (10**8, 32)])
def test_a_batch_is_at_most_a_256th_of_the_limit_and_32_counts(limit: int, batch: int) -> None:
    assert ratelimit.Counter.batch(Rate(limit, 60)) == batch


# --- Who is counted ---


def test_each_client_has_a_budget_of_its_own(settings: Any, acme_api: Api, globex_api: Api) -> None:
    settings.API_RATE_LIMIT = "2/hour"
    wait_for_window_room(HOUR, 30)
    statuses = [acme_api.get("/api/v1/subscriptions/").status_code for _ in range(3)]

    other = globex_api.get("/api/v1/subscriptions/")

    assert statuses == [200, 200, 429]
    assert (other.status_code, other["X-RateLimit-Remaining"]) == (200, "1")


def test_anonymous_requests_are_counted_per_ip_address_at_the_anonymous_rate(settings: Any, db: None) -> None:
    settings.API_RATE_LIMIT = "100/hour"
    settings.API_RATE_LIMIT_ANON = "2/hour"
    wait_for_window_room(HOUR, 30)
    here = [anonymous(ELSEWHERE).get("/api/v1/subscriptions/") for _ in range(3)]

    there = anonymous("198.51.100.9").get("/api/v1/subscriptions/")

    assert [r.status_code for r in here] == [401, 401, 429]
    assert [headers(r)[:2] for r in here] == [("2", "1"), ("2", "0"), ("2", "0")]
    assert (there.status_code, headers(there)[:2]) == (401, ("2", "1"))


def test_an_authenticated_client_is_not_held_back_by_its_addresss_anonymous_budget(
    settings: Any, platform_api: Api
) -> None:
    settings.API_RATE_LIMIT = "100/hour"
    settings.API_RATE_LIMIT_ANON = "1/hour"
    wait_for_window_room(HOUR, 30)
    anonymous(ELSEWHERE).get("/api/v1/subscriptions/")
    assert anonymous(ELSEWHERE).get("/api/v1/subscriptions/").status_code == 429

    response = platform_api.get("/api/v1/subscriptions/", REMOTE_ADDR=ELSEWHERE)

    assert (response.status_code, response["X-RateLimit-Limit"]) == (200, "100")


def test_an_unknown_or_expired_token_is_counted_against_the_address(settings: Any, db: None) -> None:
    settings.API_RATE_LIMIT = "100/hour"
    settings.API_RATE_LIMIT_ANON = "1/hour"
    wait_for_window_room(HOUR, 30)
    forged = anonymous()
    forged.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")

    responses = [forged.get("/api/v1/subscriptions/") for _ in range(2)]

    assert [r.status_code for r in responses] == [401, 429]
    assert responses[0]["X-RateLimit-Limit"] == "1"


def test_the_token_endpoint_is_limited_per_ip_address(settings: Any, platform_api: Api) -> None:
    settings.API_RATE_LIMIT_ANON = "2/hour"
    wait_for_window_room(HOUR, 30)
    credentials = basic_auth(platform_api.client_id, platform_api.client_secret)

    def ask() -> Any:
        return Client().post(
            "/oauth/token/", {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=credentials, REMOTE_ADDR=ELSEWHERE
        )

    responses = [ask() for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert "access_token" not in responses[2].json()
    assert int(responses[2]["Retry-After"]) >= 1


def test_a_clients_own_rate_limit_overrides_the_default(settings: Any, acme_api: Api, globex_api: Api) -> None:
    settings.API_RATE_LIMIT = "100/hour"
    wait_for_window_room(HOUR, 30)
    ApiClient.objects.filter(application__client_id=acme_api.client_id).update(rate_limit="2/hour")

    limited = [acme_api.get("/api/v1/subscriptions/") for _ in range(3)]
    default = globex_api.get("/api/v1/subscriptions/")

    assert [(r.status_code, r["X-RateLimit-Limit"]) for r in limited] == [(200, "2"), (200, "2"), (429, "2")]
    assert (default.status_code, default["X-RateLimit-Limit"]) == (200, "100")


def test_a_client_override_may_be_more_generous_than_the_default(settings: Any, acme_api: Api) -> None:
    settings.API_RATE_LIMIT = "1/hour"
    wait_for_window_room(HOUR, 30)
    ApiClient.objects.filter(application__client_id=acme_api.client_id).update(rate_limit="5000/min")

    statuses = [acme_api.get("/api/v1/subscriptions/").status_code for _ in range(3)]

    assert statuses == [200, 200, 200]


def test_paths_outside_the_api_are_never_limited_nor_given_the_headers(settings: Any, db: None) -> None:
    settings.API_RATE_LIMIT_ANON = "1/hour"
    wait_for_window_room(HOUR, 30)
    anonymous(ELSEWHERE).get("/api/v1/subscriptions/")
    assert anonymous(ELSEWHERE).get("/api/v1/subscriptions/").status_code == 429

    for path in ("/healthz", "/admin/login/", "/metrics"):
        for _ in range(3):
            response = anonymous(ELSEWHERE).get(path)
            assert response.status_code == 200, (path, response.content[:300])
            assert "X-RateLimit-Limit" not in response and "Retry-After" not in response


# --- Rates ---


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("5/sec", Rate(5, 1)),
        ("5/s", Rate(5, 1)),
        ("5/second", Rate(5, 1)),
        ("100/min", Rate(100, 60)),
        ("100/m", Rate(100, 60)),
        ("100/minute", Rate(100, 60)),
        ("7/hour", Rate(7, 3600)),
        ("7/h", Rate(7, 3600)),
        (" 3 / MIN ", Rate(3, 60)),
    ],
)
def test_a_rate_is_requests_per_second_minute_or_hour(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["", "100", "100/", "/min", "100/day", "0/min", "-1/min", "1.5/min", "ten/min", "100/min/2", "100 per min"]
)
def test_a_malformed_rate_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ImproperlyConfigured):
        parse_rate(text)


@pytest.mark.parametrize("name", ["API_RATE_LIMIT", "API_RATE_LIMIT_ANON"])
def test_a_malformed_rate_setting_stops_the_web_process_at_its_first_request(settings: Any, name: str) -> None:
    setattr(settings, name, "lots")

    with pytest.raises(ImproperlyConfigured):
        Client().get("/healthz")


def test_a_malformed_client_override_is_refused_by_validation(acme_api: Api) -> None:
    client = ApiClient.objects.get(application__client_id=acme_api.client_id)
    client.rate_limit = "as fast as you like"

    with pytest.raises(ValidationError) as refused:
        client.full_clean()

    assert "rate_limit" in refused.value.message_dict


# --- Fail open ---


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def unreachable_store(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Records]:
    """The middleware's counter, new, pointed at a port nothing listens on; its log records captured."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(ratelimit, "counter", ratelimit.Counter())
    handler = Records()
    logger = logging.getLogger("hookrelay.ratelimit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_when_the_store_is_unreachable_requests_are_served_unlimited_and_it_is_logged_once(
    settings: Any, platform_api: Api, unreachable_store: Records
) -> None:
    settings.API_RATE_LIMIT = "1/hour"

    responses = [platform_api.get("/api/v1/subscriptions/") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all("X-RateLimit-Limit" not in r for r in responses)
    warnings = [r for r in unreachable_store.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


# --- Across processes, with real Redis ---


@pytest.fixture
def servers(tmp_path: Path, transactional_db: None, flush_redis: Callable[[], None]) -> Iterator[Servers]:
    base = web_env(tmp_path, DATABASE_URL=database_url(), REDIS_URL=settings.REDIS_URL)
    base["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    with Servers(tmp_path, base) as started:
        yield started


def get(web: Web, api: Api, path: str = "/api/v1/subscriptions/") -> requests.Response:
    return requests.get(web.url(path), headers={"Authorization": f"Bearer {api.token}"}, timeout=30)


def metric(web: Web, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(web.url("/metrics"), timeout=30).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    return sum(s.value for s in samples)


@pytest.mark.services
def test_fifty_concurrent_requests_against_a_limit_of_twenty_let_exactly_twenty_through(
    servers: Servers, platform_api: Api
) -> None:
    web = servers.web(workers=2, threads=8, API_RATE_LIMIT="20/hour")
    wait_for_window_room(HOUR, 60)
    end = str(window_end(HOUR))
    start = threading.Barrier(50)

    def one(_: int) -> requests.Response:
        start.wait(timeout=30)
        return get(web, platform_api)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(one, range(50)))

    passed = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(passed), len(refused)) == (20, 30)
    # Each count was taken exactly once: an atomic increment, never a read-then-write.
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in passed) == list(range(20))
    assert {r.headers["X-RateLimit-Remaining"] for r in refused} == {"0"}
    assert {(r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Reset"]) for r in responses} == {("20", end)}
    assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["detail"] for r in refused)
    assert metric(web, "hookrelay_ratelimit_rejections_total") == 30


@pytest.mark.services
def test_two_web_processes_share_one_limit(servers: Servers, platform_api: Api) -> None:
    one = servers.web(API_RATE_LIMIT="6/hour")
    two = servers.web(API_RATE_LIMIT="6/hour")
    wait_for_window_room(HOUR, 60)

    responses = [get(web, platform_api) for web in (one, two) * 4]

    assert [r.status_code for r in responses] == [200] * 6 + [429] * 2
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["5", "4", "3", "2", "1", "0", "0", "0"]


@pytest.mark.services
def test_two_web_processes_taking_batches_never_give_out_a_count_twice(servers: Servers, platform_api: Api) -> None:
    one = servers.web(API_RATE_LIMIT="2048/hour")  # batches of 8
    two = servers.web(API_RATE_LIMIT="2048/hour")
    wait_for_window_room(HOUR, 60)

    responses = [get(web, platform_api) for web in (one, two) * 12]

    assert [r.status_code for r in responses] == [200] * 24
    remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in responses]
    assert len(set(remaining)) == 24 and min(remaining) >= 2048 - 32
    # 12 requests in each process: two batches of 8 each, so four calls to Redis in all.
    assert int(redis.Redis.from_url(settings.REDIS_URL).get(client_count_key(platform_api, HOUR))) == 32


@pytest.mark.services
def test_the_shared_limit_resets_for_every_process_when_the_window_ends(servers: Servers, platform_api: Api) -> None:
    one = servers.web(API_RATE_LIMIT="2/sec")
    two = servers.web(API_RATE_LIMIT="2/sec")
    for web in (one, two):
        get(web, platform_api)  # a process's first request is slow: warm both before timing a window
    time.sleep(1 - time.time() % 1 + 0.01)  # the warm-ups counted: start in a fresh window

    first = [get(web, platform_api) for web in (one, two, one)]
    time.sleep(max(0.0, int(first[0].headers["X-RateLimit-Reset"]) - time.time()) + 0.01)
    again = [get(web, platform_api) for web in (two, one)]

    assert [r.status_code for r in first] == [200, 200, 429]
    assert [(r.status_code, r.headers["X-RateLimit-Remaining"]) for r in again] == [(200, "1"), (200, "0")]


@pytest.mark.services
def test_with_redis_unreachable_the_api_keeps_serving_and_logs_it_once(servers: Servers, platform_api: Api) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    web = servers.web(API_RATE_LIMIT="1/hour", REDIS_URL=dead, CELERY_BROKER_URL=dead)

    started = time.monotonic()
    responses = [get(web, platform_api) for _ in range(4)]

    assert [r.status_code for r in responses] == [200] * 4
    assert all("X-RateLimit-Limit" not in r.headers for r in responses)
    assert time.monotonic() - started < 10
    assert web.output().count("rate-limit store unreachable") == 1
