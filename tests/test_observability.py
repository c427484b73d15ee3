"""Issue 5 and CONTRACT.md section 3 Operations: correlation ids end to end, attempt log lines, /metrics, /healthz."""

import json
import logging
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from config.logging import CorrelationIdFilter, Formatter, JsonFormatter
from deliveries.models import Delivery
from subscriptions.models import Subscription
from tests.conftest import REQUIRE_SERVICES, Api, WorkerProcess, database_url
from tests.processes import Servers, Web, free_port, web_env
from tests.receiver import Receiver, Reply
from webhooks import correlation

CORRELATION_ID = "checkout-7f3a:retry.2"
ATTEMPT_FIELDS = {"event", "delivery", "subscription", "attempt", "outcome", "status", "duration_ms", "correlation_id"}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with Servers(tmp_path, web_env(tmp_path)) as started:
        yield started


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout} s")


def fail_on_path(request: Any) -> Reply:
    return Reply(status=500, body=b"down") if request.path.startswith("/fail") else Reply()


def publish_over_http(web: Web, api: Api, body: dict) -> requests.Response:
    headers = {"Authorization": f"Bearer {api.token}", "X-Correlation-Id": CORRELATION_ID}
    return requests.post(web.url("/api/v1/events/"), json=body, headers=headers, timeout=30)


# --- Correlation ids and attempt log lines (real worker process) ---


def attempt_line(worker: WorkerProcess, event_id: str) -> str:
    def find() -> str | None:
        lines = worker.output().splitlines()
        return next((line for line in lines if " attempt " in line and f"event={event_id}" in line), None)

    return wait_until(find, timeout=15, what=f"the worker's attempt line for {event_id}")


@pytest.mark.services
def test_the_correlation_id_sent_with_an_event_reaches_the_receiver_and_the_workers_attempt_line(
    start_worker: Callable[..., WorkerProcess], receiver: Receiver, platform_api: Api
) -> None:
    worker = start_worker()
    Subscription.objects.create(url=receiver.url(), events=["order.*"])

    response = platform_api.post(
        "/api/v1/events/", {"type": "order.created", "data": {"n": 1}}, HTTP_X_CORRELATION_ID=CORRELATION_ID
    )

    assert response.status_code == 202
    assert response["X-Correlation-Id"] == CORRELATION_ID
    (request,) = receiver.wait_for(1)
    assert request.headers["X-Correlation-Id"] == CORRELATION_ID
    line = attempt_line(worker, response.json()["id"])
    assert f"[{CORRELATION_ID}]" in line
    assert f"correlation_id={CORRELATION_ID}" in line
    assert "outcome=success" in line and "status=200" in line and "attempt=1" in line


def json_attempt_lines(worker: WorkerProcess, event_id: str) -> list[dict]:
    found = []
    for line in worker.output().splitlines():
        if line.startswith("{") and event_id in line:
            record = json.loads(line)  # the whole line is one JSON object
            if record["message"].startswith("attempt "):
                found.append(record)
    return found


@pytest.mark.services
def test_with_json_logs_each_attempt_is_one_json_object_with_its_fields(
    start_worker: Callable[..., WorkerProcess], receiver: Receiver, platform_api: Api
) -> None:
    worker = start_worker(LOG_FORMAT="json", WEBHOOK_RETRY_SCHEDULE="3600")
    receiver.reply = fail_on_path
    good = Subscription.objects.create(url=receiver.url("/ok"), events=["#"])
    bad = Subscription.objects.create(url=receiver.url("/fail?token=private"), events=["#"])

    response = platform_api.post(
        "/api/v1/events/", {"type": "order.created", "data": {}}, HTTP_X_CORRELATION_ID=CORRELATION_ID
    )
    event_id = response.json()["id"]

    def both() -> list[dict] | None:
        found = json_attempt_lines(worker, event_id)
        return found if len(found) == 2 else None

    lines = wait_until(both, what="two JSON attempt lines")
    by_subscription = {line["subscription"]: line for line in lines}
    for subscription, outcome, status in ((good, "success", 200), (bad, "failure", 500)):
        line = by_subscription[subscription.id]
        delivery = Delivery.objects.get(event_id=event_id, subscription=subscription)
        assert set(line) >= ATTEMPT_FIELDS
        assert (line["event"], line["delivery"], line["attempt"]) == (event_id, delivery.id, 1)
        assert (line["outcome"], line["status"]) == (outcome, status)
        assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0
        assert line["correlation_id"] == CORRELATION_ID
        assert (line["level"], line["logger"]) == ("INFO", "hookrelay.deliveries")
    assert by_subscription[good.id]["error"] is None
    assert by_subscription[bad.id]["error"] == "HTTP 500"
    assert "private" not in json.dumps(by_subscription[bad.id])


def test_the_json_formatter_writes_the_attempt_fields_and_the_current_correlation_id() -> None:
    record = logging.LogRecord("hookrelay.deliveries", logging.INFO, __file__, 1, "attempt %s", ("x",), None)
    record.event, record.attempt, record.status = "evt_1", 2, None
    token = correlation.current.set("req-9")
    try:
        CorrelationIdFilter().filter(record)
    finally:
        correlation.current.reset(token)

    line = JsonFormatter().format(record)

    assert "\n" not in line
    assert json.loads(line) | {"time": "-"} == {
        "time": "-",
        "level": "INFO",
        "logger": "hookrelay.deliveries",
        "message": "attempt x",
        "correlation_id": "req-9",
        "event": "evt_1",
        "attempt": 2,
        "status": None,
    }


def test_the_plain_formatter_writes_the_time_as_loggings_own_formatter_does_second_after_second() -> None:
    plain = "%(asctime)s %(levelname)s %(name)s %(message)s"
    ours, loggings = Formatter(plain), logging.Formatter(plain)
    # Within one second, across seconds, back to an earlier second (another thread's older record).
    for created in (1_795_729_565.001, 1_795_729_565.999, 1_795_729_566.5, 1_795_729_600.25, 1_795_729_565.75):
        record = logging.LogRecord("hookrelay.deliveries", logging.INFO, __file__, 1, "attempt", (), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000)

        assert ours.format(record) == loggings.format(record)
        assert Formatter(plain, datefmt="%H:%M").format(record) == logging.Formatter(plain, "%H:%M").format(record)


def test_the_configured_plain_log_lines_use_our_formatter() -> None:
    handler = logging.getLogger("hookrelay").handlers[0]
    assert type(handler.formatter) in (Formatter, JsonFormatter)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(CorrelationIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def request_log() -> Iterator[Records]:
    """What Django logs about responses, through our correlation filter, as the console handler sees it."""
    handler = Records()
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing/", "/api/v1/subscriptions/", "/no-such-page"])
def test_djangos_own_line_about_a_failed_request_carries_its_correlation_id(
    request_log: Records, db: None, path: str
) -> None:
    response = Client().get(path, HTTP_X_CORRELATION_ID="trace-404")

    assert response.status_code in (401, 404)
    assert [record.correlation_id for record in request_log.records] == ["trace-404"]  # type: ignore[attr-defined]


# --- /metrics across separate web and worker processes ---


def scrape(web: Web) -> dict[tuple[str, frozenset], float]:
    response = requests.get(web.url("/metrics"), timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (sample, sample_labels), v in samples.items() if sample == name and wanted <= sample_labels)


WATCHED = {
    "published": ("hookrelay_events_published_total", {}),
    "succeeded": ("hookrelay_delivery_attempts_total", {"outcome": "success", "status_class": "2xx"}),
    "failed": ("hookrelay_delivery_attempts_total", {"outcome": "failure", "status_class": "5xx"}),
    "attempts": ("hookrelay_delivery_attempts_total", {}),
    "timed": ("hookrelay_delivery_duration_seconds_count", {}),
    "latency": ("hookrelay_delivery_latency_seconds_count", {}),
    "pending": ("hookrelay_deliveries_pending", {}),
}


def watched(web: Web) -> dict[str, float]:
    samples = scrape(web)
    return {key: value(samples, name, **labels) for key, (name, labels) in WATCHED.items()}


@pytest.mark.services
def test_metrics_count_exactly_the_events_and_attempts_of_separate_web_and_worker_processes(
    servers: Servers,
    start_worker: Callable[..., WorkerProcess],
    receiver: Receiver,
    platform_api: Api,
    tmp_path: Path,
) -> None:
    shared = str(tmp_path / "shared-metrics")
    Path(shared).mkdir()
    services = {"REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    web = servers.web(workers=2, DATABASE_URL=database_url(), PROMETHEUS_MULTIPROC_DIR=shared, **services)
    start_worker(WEBHOOK_RETRY_SCHEDULE="3600", PROMETHEUS_MULTIPROC_DIR=shared)
    receiver.reply = fail_on_path
    Subscription.objects.create(url=receiver.url("/ok"), events=["order.*"])
    Subscription.objects.create(url=receiver.url("/fail"), events=["order.*"])
    before = watched(web)

    for n in range(3):
        assert publish_over_http(web, platform_api, {"type": "order.created", "data": {"n": n}}).status_code == 202
    receiver.wait_for(6)
    wait_until(lambda: watched(web)["attempts"] - before["attempts"] >= 6, what="six attempts counted")
    after = watched(web)

    moved = {key: after[key] - before[key] for key in WATCHED}
    assert moved == {
        "published": 3,
        "succeeded": 3,
        "failed": 3,
        "attempts": 6,
        "timed": 6,
        "latency": 3,
        "pending": 3,  # the failed ones wait an hour for their retry
    }
    samples = scrape(web)
    assert value(samples, "hookrelay_oldest_pending_delivery_age_seconds") > 0
    assert value(samples, "hookrelay_delivery_duration_seconds_sum") > 0


def test_metrics_serve_every_family_the_contract_names(db: None) -> None:
    response = Client().get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response["X-Correlation-Id"]
    text = response.content.decode()
    families = {family.name for family in text_string_to_metric_families(text)}
    expected = {
        "hookrelay_events_published",
        "hookrelay_delivery_duration_seconds",
        "hookrelay_deliveries_pending",
        "hookrelay_oldest_pending_delivery_age_seconds",
    }
    assert expected <= families
    assert "# TYPE hookrelay_delivery_duration_seconds histogram" in text


# --- /healthz ---


def health(web: Web, **headers: str) -> tuple[int, dict]:
    response = requests.get(web.url("/healthz"), headers=headers, timeout=30)
    return response.status_code, response.json()


def needs_redis_server() -> None:
    if shutil.which("redis-server"):
        return
    if REQUIRE_SERVICES:
        pytest.fail("REQUIRE_SERVICES=1 but redis-server is not installed")
    pytest.skip("redis-server is not installed")


def test_healthz_answers_ok_for_both_parts(db: None) -> None:
    response = Client().get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok", "database": "ok", "broker": "ok"})
    assert response["X-Correlation-Id"]


def test_healthz_names_the_broker_while_it_is_down_and_recovers_without_restarting_the_web_process(
    servers: Servers,
) -> None:
    needs_redis_server()
    broker = servers.redis()
    web = servers.web(CELERY_BROKER_URL=broker.url)
    workers = {child.pid for child in psutil.Process(web.process.pid).children()}
    assert health(web) == (200, {"status": "ok", "database": "ok", "broker": "ok"})

    broker.kill()
    started = time.monotonic()
    status, body = health(web, **{"X-Correlation-Id": "probe-broker-down"})

    assert status == 503
    assert body["status"] != "ok" and body["broker"] != "ok" and body["database"] == "ok"
    assert time.monotonic() - started < 10
    assert "[probe-broker-down]" in web.output()

    servers.redis(port=broker.port)
    wait_until(lambda: health(web)[0] == 200, timeout=20, what="/healthz 200 again")
    assert health(web) == (200, {"status": "ok", "database": "ok", "broker": "ok"})
    assert web.process.poll() is None
    assert {child.pid for child in psutil.Process(web.process.pid).children()} == workers


def test_healthz_gives_up_quickly_on_a_broker_that_accepts_connections_but_never_answers(servers: Servers) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        web = servers.web(CELERY_BROKER_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")

        started = time.monotonic()
        status, body = health(web)

    assert (status, body["broker"] != "ok", body["database"]) == (503, True, "ok")
    assert time.monotonic() - started < 10


def test_healthz_names_the_database_when_it_is_unreachable(servers: Servers) -> None:
    web = servers.web(DATABASE_URL=f"postgres://hookrelay@127.0.0.1:{free_port()}/hookrelay")

    status, body = health(web)

    assert status == 503
    assert body["database"] != "ok" and body["broker"] == "ok" and body["status"] != "ok"


def test_observe_many_counts_each_value_in_the_bucket_observe_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from config.metrics import LATENCY_BUCKETS, observe_many

    registry = CollectorRegistry()
    one_by_one = Histogram("one_by_one_seconds", "observe", buckets=LATENCY_BUCKETS, registry=registry)
    batched = Histogram("batched_seconds", "observe_many", buckets=LATENCY_BUCKETS, registry=registry)
    # Below, on and between bounds, past the last one, and zero.
    values = [0.0, 0.001, 0.005, 0.0051, 0.01, 0.3, 0.3, 1, 7.5, 21600, 99999.0]

    for value in values:
        one_by_one.observe(value)
    observe_many(batched, values)
    observe_many(batched, [])

    def samples(histogram: Histogram) -> list[tuple[str, dict, float]]:
        (family,) = histogram.collect()
        return [
            (s.name.removeprefix(family.name), s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples(batched) == samples(one_by_one)
    assert {s[1].get("le"): s[2] for s in samples(batched) if s[0] == "_bucket"}["0.005"] == 3
