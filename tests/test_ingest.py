"""POST /api/v1/events/ below DRF (webhooks.ingest): a token checked once publishes in one statement that
confirms it, with the answer the DRF view gives; anything else, or a hint gone stale, goes through DRF."""

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from oauth2_provider.models import AccessToken

from deliveries.models import Delivery
from subscriptions.models import ApiClient, Subscription, Tenant
from tests.conftest import Api, WorkerProcess, database_url
from tests.processes import Servers, web_env
from tests.receiver import Receiver
from webhooks.models import Event

EVENTS = "/api/v1/events/"
EVENT = {"type": "order.created", "data": {"id": 42, "total": "9.99"}}
SAME_HEADERS = ["Content-Type", "Vary", "Allow", "X-Frame-Options", "X-Content-Type-Options", "X-RateLimit-Limit"]


@pytest.fixture
def checked(acme_api: Api, subscribe: Callable[..., Subscription]) -> tuple[Api, Any]:
    """An acme client with an order.* subscription whose token this process has checked in full once."""
    subscribe("https://hooks.example.com/a", ["order.*"], tenant=Tenant.objects.get(slug="acme"))
    with CaptureQueriesContext(connection) as queries:
        first = acme_api.post(EVENTS, EVENT)
    assert first.status_code == 202, first.content
    assert len(queries) > 1  # the token, then the event: the DRF path
    return acme_api, first


@pytest.mark.postgresql
@pytest.mark.django_db
def test_a_checked_token_publishes_in_one_statement_with_the_answer_drf_gives(checked: tuple[Api, Any]) -> None:
    api, first = checked

    with CaptureQueriesContext(connection) as queries:
        second = api.post(EVENTS, EVENT, HTTP_X_CORRELATION_ID="order-42")

    assert len(queries) == 1, [query["sql"][:80] for query in queries]
    assert second.status_code == 202
    assert {name: second[name] for name in SAME_HEADERS} == {name: first[name] for name in SAME_HEADERS}
    body, earlier = second.json(), first.json()
    assert body.keys() == earlier.keys()
    assert body["id"] != earlier["id"]
    assert {key: body[key] for key in ("type", "tenant", "deliveries")} == {
        "type": "order.created",
        "tenant": "acme",
        "deliveries": 1,
    }
    assert second["X-Correlation-Id"] == "order-42"
    event = Event.objects.get(pk=body["id"])
    client = ApiClient.objects.get(application__client_id=api.client_id)
    assert event.tenant.slug == "acme" and event.data == EVENT["data"]
    assert event.idempotency_scope == f"client:{client.pk}" and event.correlation_id == "order-42"
    assert event.created_at.isoformat().replace("+00:00", "Z") == body["created_at"]
    assert Delivery.objects.filter(event=event, status="pending").count() == 1


@pytest.mark.django_db
def test_a_client_moved_to_another_tenant_publishes_for_that_tenant(checked: tuple[Api, Any], globex: Tenant) -> None:
    api, _ = checked
    ApiClient.objects.filter(application__client_id=api.client_id).update(tenant=globex)

    response = api.post(EVENTS, EVENT)

    assert response.status_code == 202
    assert response.json()["tenant"] == "globex"
    assert Event.objects.get(pk=response.json()["id"]).tenant == globex


@pytest.mark.django_db
def test_a_renamed_tenant_answers_with_its_new_slug(checked: tuple[Api, Any]) -> None:
    api, _ = checked
    Tenant.objects.filter(slug="acme").update(slug="acme-corp")

    response = api.post(EVENTS, EVENT)

    assert response.status_code == 202
    assert response.json()["tenant"] == "acme-corp"


@pytest.mark.django_db
def test_a_token_whose_scope_was_narrowed_is_refused(checked: tuple[Api, Any]) -> None:
    api, _ = checked
    AccessToken.objects.filter(token=api.token).update(scope="subscriptions.read")

    response = api.post(EVENTS, EVENT)

    assert response.status_code == 403
    assert Event.objects.count() == 1


@pytest.mark.django_db
def test_a_subscription_added_after_the_check_receives_the_next_event(
    checked: tuple[Api, Any], subscribe: Callable[..., Subscription]
) -> None:
    api, _ = checked
    added = subscribe("https://hooks.example.com/b", ["#"], tenant=Tenant.objects.get(slug="acme"))

    response = api.post(EVENTS, EVENT)

    assert response.json()["deliveries"] == 2
    assert Delivery.objects.filter(event_id=response.json()["id"], subscription=added).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status"),
    [
        (b'{"type": "order.created", "data": {}, "extra": NaN}', "application/json", {}, 400),
        (json.dumps(EVENT).encode("utf-16"), "application/json", {}, 400),
        (
            json.dumps(EVENT).encode(),
            "application/json",
            {"HTTP_ACCEPT": "application/vnd.hookrelay+json; version=2"},
            406,
        ),
        (json.dumps({**EVENT, "tenant": "globex"}).encode(), "application/json", {}, 403),
        (json.dumps({**EVENT, "data": {"n": float("inf")}}).encode(), "application/json", {}, 400),
        (json.dumps(EVENT).encode(), "application/json", {"HTTP_IDEMPOTENCY_KEY": " " * 256}, 400),
        (json.dumps(EVENT).encode(), "text/plain", {}, 415),
    ],
    ids=["nan-elsewhere", "utf-16", "unknown-version", "other-tenant", "infinity", "bad-key", "not-json"],
)
def test_what_drf_would_refuse_is_still_refused_after_the_check(
    checked: tuple[Api, Any], globex: Tenant, body: bytes, content_type: str, headers: dict, status: int
) -> None:
    api, _ = checked

    response = api.http.generic("POST", EVENTS, body, content_type=content_type, **headers)

    assert response.status_code == status, response.content
    assert Event.objects.count() == 1


# --- Through gunicorn, to a real worker and receiver ---


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with Servers(tmp_path, web_env(tmp_path)) as started:
        yield started


@pytest.mark.services
def test_events_posted_to_gunicorn_arrive_until_the_token_is_revoked(
    servers: Servers, start_worker: Callable[..., WorkerProcess], receiver: Receiver, acme_api: Api
) -> None:
    services = {"REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    web = servers.web(workers=1, threads=None, DATABASE_URL=database_url(), **services)
    start_worker()
    Subscription.objects.create(url=receiver.url(), events=["order.*"], tenant=Tenant.objects.get(slug="acme"))
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {acme_api.token}"

    published = []
    for n in range(4):
        response = session.post(web.url(EVENTS), json={"type": "order.created", "data": {"n": n}}, timeout=30)
        assert response.status_code == 202, response.text
        assert response.json()["tenant"] == "acme" and response.json()["deliveries"] == 1
        published.append(response.json()["id"])
    AccessToken.objects.filter(token=acme_api.token).delete()
    refused = session.post(web.url(EVENTS), json={"type": "order.created", "data": {"n": 4}}, timeout=30)

    received = receiver.wait_for(4)
    assert sorted(request.headers["webhook-id"] for request in received) == sorted(published)
    assert sorted(json.loads(request.body)["data"]["n"] for request in received) == [0, 1, 2, 3]
    assert refused.status_code == 401
    assert Event.objects.count() == 4


def end_other_sessions(keep: int | None = -1) -> list[int]:
    """As a PostgreSQL restart or an administrator would: end every session on the test database but ours
    (``keep``: the backend pid of another session to spare; by default this thread's, None: none)."""
    import psycopg

    if keep == -1:
        keep = connection.connection.info.backend_pid
    with psycopg.connect(database_url(), autocommit=True) as admin:
        others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> %s"
        ended = [pid for (pid,) in admin.execute(f"SELECT pid {others}", [keep or 0]).fetchall()]  # noqa: S608
        admin.execute(f"SELECT pg_terminate_backend(pid) {others}", [keep or 0])  # noqa: S608
        deadline = time.monotonic() + 10
        while admin.execute(f"SELECT count(*) {others}", [keep or 0]).fetchone()[0] and time.monotonic() < deadline:  # noqa: S608
            time.sleep(0.05)
    return ended


@pytest.mark.services
def test_gunicorn_publishes_after_postgresql_ended_its_sessions(
    transactional_db, servers: Servers, acme_api: Api
) -> None:
    # Django's CONN_HEALTH_CHECKS guard its own cursors at a request's first use of the connection; the
    # one-statement path has a cursor of its own and must not answer 500 on a connection the server closed.
    services = {"REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    web = servers.web(workers=1, threads=1, DATABASE_URL=database_url(), **services)
    Subscription.objects.create(
        url="https://hooks.example.com/a", events=["order.*"], tenant=Tenant.objects.get(slug="acme")
    )
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {acme_api.token}"
    for n in range(2):  # the first checks the token through DRF; the second takes the one-statement path
        response = session.post(web.url(EVENTS), json={"type": "order.created", "data": {"n": n}}, timeout=30)
        assert response.status_code == 202, response.text

    assert end_other_sessions(), "gunicorn's connection must have been ended"
    after = session.post(web.url(EVENTS), json={"type": "order.created", "data": {"n": 2}}, timeout=30)

    assert after.status_code == 202, after.text
    assert after.json()["deliveries"] == 1
    assert sorted(event.data["n"] for event in Event.objects.all()) == [0, 1, 2]
