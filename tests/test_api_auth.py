"""CONTRACT.md sections 1 and 2: the token endpoint, create_api_client, scopes on every endpoint, and tenants."""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import pytest
from django.conf import global_settings
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application
from rest_framework.test import APIClient

from deliveries.models import Attempt, Delivery, Status
from deliveries.worker import deliver_batch
from subscriptions.models import ApiClient, Subscription, Tenant
from tests.conftest import ROOT, Api, basic_auth
from tests.receiver import Receiver
from webhooks import publish
from webhooks.models import Event

pytestmark = pytest.mark.django_db

ALL_SCOPES = ["subscriptions.read", "subscriptions.write", "events.publish", "deliveries.read", "deliveries.write"]
TOKEN_URL = "/oauth/token/"


@pytest.fixture(autouse=True)
def fast_secret_hashing(settings: Any) -> None:
    """Client secrets are stored hashed with PBKDF2 (about 0.5 s a client); one test below keeps the default."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def default_secret_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    """Two receivers for the whole module: stopping one takes half a second (``serve_forever``'s poll)."""
    servers = Receiver().start(), Receiver().start()
    yield servers
    for server in servers:
        server.stop()


def fresh(server: Receiver) -> Receiver:
    with server.lock:
        server.requests.clear()
    return server


@pytest.fixture
def receiver(receivers: tuple[Receiver, Receiver]) -> Receiver:
    return fresh(receivers[0])


@pytest.fixture
def second_receiver(receivers: tuple[Receiver, Receiver]) -> Receiver:
    return fresh(receivers[1])


# --- POST /oauth/token/ ---


@pytest.fixture
def credentials() -> Callable[..., tuple[str, str]]:
    """``credentials(tenant, scopes)``: a fresh client's id and secret, created as create_api_client does."""
    from subscriptions.clients import create_api_client

    def make(tenant: str | None = "acme", scopes: list[str] | None = None) -> tuple[str, str]:
        new = create_api_client("token test", tenant, scopes)
        return new.client.application.client_id, new.client_secret

    return make


def ask_token(form: dict[str, str], authorization: str | None = None) -> Any:
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    return Client(HTTP_HOST="localhost").post(
        TOKEN_URL, urlencode(form), content_type="application/x-www-form-urlencoded", **extra
    )


def test_a_client_gets_a_bearer_token_with_http_basic_credentials(
    default_secret_hashing: None, credentials: Callable[..., tuple[str, str]]
) -> None:
    client_id, secret = credentials()
    assert Application.objects.get(client_id=client_id).client_secret.startswith("pbkdf2_sha256$")

    response = ask_token({"grant_type": "client_credentials"}, basic_auth(client_id, secret))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert sorted(body["scope"].split()) == sorted(ALL_SCOPES)


def test_a_client_gets_a_token_with_its_credentials_in_the_form_body(
    credentials: Callable[..., tuple[str, str]],
) -> None:
    client_id, secret = credentials(scopes=["events.publish"])

    response = ask_token({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})

    assert response.status_code == 200, response.content
    assert response.json()["token_type"] == "Bearer"
    assert response.json()["expires_in"] == 3600
    assert response.json()["scope"] == "events.publish"


def test_the_token_works_on_the_api_until_it_expires(credentials: Callable[..., tuple[str, str]]) -> None:
    client_id, secret = credentials()
    token = ask_token({"grant_type": "client_credentials"}, basic_auth(client_id, secret)).json()["access_token"]
    api = APIClient(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert api.get("/api/v1/subscriptions/").status_code == 200
    stored = AccessToken.objects.get(token=token)
    assert timedelta(seconds=3590) < stored.expires - timezone.now() <= timedelta(seconds=3600)


def test_asking_for_some_of_its_scopes_gives_a_token_with_only_those(
    credentials: Callable[..., tuple[str, str]],
) -> None:
    client_id, secret = credentials()

    response = ask_token(
        {"grant_type": "client_credentials", "scope": "events.publish deliveries.read"}, basic_auth(client_id, secret)
    )

    assert response.status_code == 200, response.content
    assert sorted(response.json()["scope"].split()) == ["deliveries.read", "events.publish"]
    api = APIClient(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {response.json()['access_token']}")
    assert api.get("/api/v1/deliveries/").status_code == 200
    assert api.get("/api/v1/subscriptions/").status_code == 403, "the token must not carry scopes it did not ask for"


@pytest.mark.parametrize("where", ["basic", "form"])
def test_a_wrong_secret_is_401_invalid_client(credentials: Callable[..., tuple[str, str]], where: str) -> None:
    client_id, _ = credentials()
    form = {"grant_type": "client_credentials"}
    if where == "basic":
        response = ask_token(form, basic_auth(client_id, "not-the-secret"))
    else:
        response = ask_token({**form, "client_id": client_id, "client_secret": "not-the-secret"})

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert not AccessToken.objects.exists()


def test_an_unknown_client_id_is_401_invalid_client(db: None) -> None:
    response = ask_token({"grant_type": "client_credentials"}, basic_auth("nobody", "nothing"))

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("scope", ["subscriptions.read", "events.publish subscriptions.write", "bogus"])
def test_asking_for_a_scope_the_client_lacks_is_400_invalid_scope(
    credentials: Callable[..., tuple[str, str]], scope: str
) -> None:
    client_id, secret = credentials(scopes=["events.publish"])

    response = ask_token({"grant_type": "client_credentials", "scope": scope}, basic_auth(client_id, secret))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert not AccessToken.objects.exists()


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "password", "username": "admin", "password": "admin"},
        {"grant_type": "authorization_code", "code": "abc", "redirect_uri": "http://localhost/"},
        {"grant_type": "refresh_token", "refresh_token": "abc"},
    ],
    ids=["password", "authorization_code", "refresh_token"],
)
def test_any_other_grant_is_400_unsupported_grant_type(
    credentials: Callable[..., tuple[str, str]], form: dict[str, str]
) -> None:
    client_id, secret = credentials()

    response = ask_token(form, basic_auth(client_id, secret))

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    assert not AccessToken.objects.exists()


# --- manage.py create_api_client ---


def create_client_command(*args: str) -> dict:
    out = StringIO()
    call_command("create_api_client", *args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, f"expected one JSON object on one line, got {out.getvalue()!r}"
    return json.loads(lines[0])


def test_the_command_prints_one_json_object_and_creates_the_tenant(db: None) -> None:
    printed = create_client_command("Acme backend", "--tenant", "acme", "--scopes", "events.publish deliveries.read")

    assert set(printed) == {"client_id", "client_secret", "tenant", "scopes"}
    assert printed["tenant"] == "acme"
    assert printed["scopes"] == ["events.publish", "deliveries.read"]
    assert Tenant.objects.filter(slug="acme").exists()
    client = ApiClient.objects.get(application__client_id=printed["client_id"])
    assert client.tenant.slug == "acme"
    assert client.application.name == "Acme backend"


def test_the_printed_credentials_get_a_token_with_the_printed_scopes(db: None) -> None:
    printed = create_client_command("acme", "--tenant", "acme", "--scopes", "events.publish")

    response = ask_token(
        {"grant_type": "client_credentials"}, basic_auth(printed["client_id"], printed["client_secret"])
    )

    assert response.status_code == 200, response.content
    assert response.json()["scope"] == "events.publish"


def test_the_command_reuses_an_existing_tenant(acme: Tenant) -> None:
    printed = create_client_command("second acme client", "--tenant", "acme")

    assert Tenant.objects.filter(slug="acme").count() == 1
    assert ApiClient.objects.get(application__client_id=printed["client_id"]).tenant == acme


def test_without_a_tenant_the_command_makes_a_platform_client_with_all_five_scopes(db: None) -> None:
    printed = create_client_command("platform")

    assert printed["tenant"] is None
    assert printed["scopes"] == ALL_SCOPES
    assert not Tenant.objects.exists()
    assert ApiClient.objects.get(application__client_id=printed["client_id"]).tenant is None


@pytest.mark.parametrize(
    "args",
    [
        ["--scopes", "events.publish bogus"],
        ["--tenant", "acme", "--scopes", "subscriptions.admin"],
        ["--tenant", "Acme"],
        ["--tenant", "acme_corp"],
        ["--tenant", "a" * 51],
        ["--tenant", ""],
        ["--tenant", "acme\n"],
    ],
    ids=["unknown-scope", "unknown-scope-with-tenant", "uppercase", "underscore", "51-chars", "empty", "newline"],
)
def test_a_bad_scope_or_slug_is_a_one_line_command_error_that_creates_nothing(db: None, args: list[str]) -> None:
    with pytest.raises(CommandError) as raised:
        create_client_command("bad client", *args)

    assert "\n" not in str(raised.value).strip()
    assert not Tenant.objects.exists()
    assert not Application.objects.exists()
    assert not ApiClient.objects.exists()


def test_a_slug_of_fifty_characters_is_accepted(db: None) -> None:
    slug = "a-1" + "b" * 47

    assert create_client_command("long", "--tenant", slug)["tenant"] == slug


def test_the_command_exits_non_zero_with_one_line_on_stderr(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'throwaway.sqlite3'}",
        HOOKRELAY_DATA_DIR=str(tmp_path),
        SECRET_KEY="x",
        PYTHONWARNINGS="ignore",
    )

    done = subprocess.run(
        [sys.executable, "manage.py", "create_api_client", "x", "--scopes", "bogus"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "bogus" in done.stderr


# --- Every endpoint: 401, 403, 404 for another tenant, success for its own ---


class Endpoint(NamedTuple):
    method: str
    path: str  # {sub} and {dlv} name acme's subscription and delivery
    scope: str | None  # None: any valid token
    body: dict | None
    success: int


SINCE = "2000-01-01T00:00:00Z"
ENDPOINTS = [
    Endpoint("get", "/api/v1/subscriptions/", "subscriptions.read", None, 200),
    Endpoint("post", "/api/v1/subscriptions/", "subscriptions.write", {"url": "{url}", "events": ["order.*"]}, 201),
    Endpoint("get", "/api/v1/subscriptions/{sub}/", "subscriptions.read", None, 200),
    Endpoint("patch", "/api/v1/subscriptions/{sub}/", "subscriptions.write", {"description": "changed"}, 200),
    Endpoint("put", "/api/v1/subscriptions/{sub}/", "subscriptions.write", {"url": "{url}", "events": ["x.y"]}, 200),
    Endpoint("delete", "/api/v1/subscriptions/{sub}/", "subscriptions.write", None, 204),
    Endpoint("get", "/api/v1/subscriptions/{sub}/secret/", "subscriptions.read", None, 200),
    Endpoint("post", "/api/v1/subscriptions/{sub}/rotate-secret/", "subscriptions.write", {}, 200),
    Endpoint("post", "/api/v1/subscriptions/{sub}/ping/", "subscriptions.write", None, 200),
    Endpoint("post", "/api/v1/subscriptions/{sub}/recover/", "deliveries.write", {"since": SINCE}, 202),
    Endpoint("post", "/api/v1/events/", "events.publish", {"type": "order.created", "data": {"id": 1}}, 202),
    Endpoint("get", "/api/v1/event-types/", None, None, 200),
    Endpoint("get", "/api/v1/deliveries/", "deliveries.read", None, 200),
    Endpoint("get", "/api/v1/deliveries/{dlv}/", "deliveries.read", None, 200),
    Endpoint("post", "/api/v1/deliveries/{dlv}/redeliver/", "deliveries.write", None, 202),
]
ENDPOINT_IDS = [f"{e.method} {e.path}" for e in ENDPOINTS]
OBJECT_ENDPOINTS = [e for e in ENDPOINTS if "{" in e.path]
SCOPED_ENDPOINTS = [e for e in ENDPOINTS if e.scope]


class World(NamedTuple):
    receiver: Receiver
    acme_subscription: Subscription
    acme_delivery: Delivery


@pytest.fixture
def world(
    acme: Tenant, globex: Tenant, receiver: Receiver, allow_loopback: None, subscribe: Callable[..., Subscription]
) -> World:
    acme_subscription = subscribe(receiver.url("/acme"), ["order.*"], tenant=acme)
    subscribe(receiver.url("/globex"), ["order.*"], tenant=globex)
    event = publish("order.created", {"id": 0}, tenant=acme)
    publish("order.created", {"id": 0}, tenant=globex)
    return World(receiver, acme_subscription, Delivery.objects.get(event=event))


def call(http: APIClient, endpoint: Endpoint, world: World) -> Any:
    path = endpoint.path.format(sub=world.acme_subscription.id, dlv=world.acme_delivery.id)
    body = endpoint.body
    if body is not None:
        body = {key: world.receiver.url() if value == "{url}" else value for key, value in body.items()}
    if endpoint.method == "get":
        return http.get(path)
    return getattr(http, endpoint.method)(path, body, format="json")


def snapshot() -> tuple:
    """Everything a refused request must leave as it was."""
    return (
        list(
            Subscription.objects.order_by("id").values_list(
                "id", "url", "events", "description", "is_active", "secret", "previous_secret", "deleted_at"
            )
        ),
        list(Delivery.objects.order_by("id").values_list("id", "status", "next_attempt_at", "attempt_count")),
        Event.objects.count(),
        Attempt.objects.count(),
    )


def bearer(token: str) -> APIClient:
    return APIClient(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {token}")


def assert_refused(response: Any, status: int, before: tuple, world: World) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)
    assert snapshot() == before
    assert world.receiver.requests == [], "a refused request must not reach the subscriber"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_every_endpoint_is_401_without_a_token(world: World, endpoint: Endpoint) -> None:
    before = snapshot()

    response = call(APIClient(HTTP_HOST="localhost"), endpoint, world)

    assert_refused(response, 401, before, world)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "not provided" in response.json()["detail"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_every_endpoint_is_401_with_a_token_that_was_never_issued(world: World, endpoint: Endpoint) -> None:
    before = snapshot()

    response = call(bearer("not-a-real-token"), endpoint, world)

    assert_refused(response, 401, before, world)
    assert response.json() == {"detail": "The access token is invalid or has expired."}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_every_endpoint_is_401_with_an_expired_token(
    world: World, make_api: Callable[..., Api], endpoint: Endpoint
) -> None:
    api = make_api(tenant="acme")
    AccessToken.objects.filter(token=api.token).update(expires=timezone.now() - timedelta(seconds=1))
    before = snapshot()

    response = call(api.http, endpoint, world)

    assert_refused(response, 401, before, world)
    assert response.json() == {"detail": "The access token is invalid or has expired."}


@pytest.mark.parametrize("endpoint", SCOPED_ENDPOINTS, ids=[f"{e.method} {e.path}" for e in SCOPED_ENDPOINTS])
def test_every_endpoint_is_403_for_a_token_with_every_scope_but_the_one_it_needs(
    world: World, make_api: Callable[..., Api], endpoint: Endpoint
) -> None:
    api = make_api(tenant="acme", scopes=[scope for scope in ALL_SCOPES if scope != endpoint.scope])
    before = snapshot()

    response = call(api.http, endpoint, world)

    assert_refused(response, 403, before, world)
    assert endpoint.scope in response.json()["detail"]


@pytest.mark.parametrize("endpoint", OBJECT_ENDPOINTS, ids=[f"{e.method} {e.path}" for e in OBJECT_ENDPOINTS])
def test_another_tenants_object_is_404_never_403(world: World, globex_api: Api, endpoint: Endpoint) -> None:
    before = snapshot()

    response = call(globex_api.http, endpoint, world)

    assert_refused(response, 404, before, world)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_every_endpoint_answers_its_own_tenants_client(world: World, acme_api: Api, endpoint: Endpoint) -> None:
    response = call(acme_api.http, endpoint, world)

    assert response.status_code == endpoint.success, response.content
    if endpoint.path.endswith("/ping/"):
        assert response.json()["success"] is True
        assert [request.path for request in world.receiver.requests] == ["/acme"]


@pytest.mark.parametrize("endpoint", OBJECT_ENDPOINTS, ids=[f"{e.method} {e.path}" for e in OBJECT_ENDPOINTS])
def test_a_platform_client_reaches_any_tenants_object(world: World, platform_api: Api, endpoint: Endpoint) -> None:
    response = call(platform_api.http, endpoint, world)

    assert response.status_code == endpoint.success, response.content


# --- Tenant rules on create ---


SUBSCRIPTION = {"url": "https://hooks.example.com/in", "events": ["order.*"]}
EVENT = {"type": "order.created", "data": {"id": 1}}


@pytest.mark.parametrize(("path", "body"), [("/api/v1/subscriptions/", SUBSCRIPTION), ("/api/v1/events/", EVENT)])
@pytest.mark.parametrize("named", [None, "acme"], ids=["no-tenant", "own-tenant"])
def test_a_tenant_client_creates_within_its_own_tenant(
    acme_api: Api, globex: Tenant, path: str, body: dict, named: str | None
) -> None:
    response = acme_api.post(path, body if named is None else {**body, "tenant": named})

    assert response.status_code in (201, 202), response.content
    assert response.json()["tenant"] == "acme"


@pytest.mark.parametrize(("path", "body"), [("/api/v1/subscriptions/", SUBSCRIPTION), ("/api/v1/events/", EVENT)])
def test_a_tenant_client_naming_another_tenant_is_403_and_nothing_is_stored(
    acme_api: Api, globex: Tenant, path: str, body: dict
) -> None:
    response = acme_api.post(path, {**body, "tenant": "globex"})

    assert response.status_code == 403, response.content
    assert "detail" in response.json()
    assert not Subscription.objects.exists()
    assert not Event.objects.exists()


@pytest.mark.parametrize(("path", "body"), [("/api/v1/subscriptions/", SUBSCRIPTION), ("/api/v1/events/", EVENT)])
def test_a_platform_client_naming_an_unknown_tenant_is_400_on_the_tenant_field(
    platform_api: Api, path: str, body: dict
) -> None:
    response = platform_api.post(path, {**body, "tenant": "initech"})

    assert response.status_code == 400, response.content
    assert "tenant" in response.json()
    assert not Subscription.objects.exists()
    assert not Event.objects.exists()
    assert not Tenant.objects.filter(slug="initech").exists()


@pytest.mark.parametrize(("path", "body"), [("/api/v1/subscriptions/", SUBSCRIPTION), ("/api/v1/events/", EVENT)])
@pytest.mark.parametrize("named", [None, "globex"], ids=["no-tenant", "a-tenant"])
def test_a_platform_client_creates_for_the_tenant_it_names_or_for_none(
    platform_api: Api, globex: Tenant, path: str, body: dict, named: str | None
) -> None:
    response = platform_api.post(path, body if named is None else {**body, "tenant": named})

    assert response.status_code in (201, 202), response.content
    assert response.json()["tenant"] == named


def test_a_tenant_field_that_is_not_a_string_is_400_on_subscription_create(platform_api: Api, acme: Tenant) -> None:
    response = platform_api.post("/api/v1/subscriptions/", {**SUBSCRIPTION, "tenant": ["acme"]})

    assert response.status_code == 400, response.content
    assert "tenant" in response.json()
    assert not Subscription.objects.exists()


# --- Tenant rules on lists ---


@pytest.fixture
def three_owners(acme: Tenant, globex: Tenant, subscribe: Callable[..., Subscription]) -> dict[str | None, str]:
    """One subscription and one delivery each for acme, globex and no tenant; subscription id by tenant slug."""
    ids: dict[str | None, str] = {}
    for tenant in (acme, globex, None):
        ids[tenant.slug if tenant else None] = subscribe("https://hooks.example.com/in", ["#"], tenant=tenant).id
        publish("order.created", {"id": 1}, tenant=tenant)
    return ids


def listed(api: Api, path: str, field: str) -> set[str]:
    response = api.get(path)
    assert response.status_code == 200, response.content
    return {row[field] for row in response.json()["results"]}


def test_a_platform_client_lists_every_tenants_subscriptions_and_deliveries(
    platform_api: Api, three_owners: dict[str | None, str]
) -> None:
    assert listed(platform_api, "/api/v1/subscriptions/", "id") == set(three_owners.values())
    assert listed(platform_api, "/api/v1/deliveries/", "subscription") == set(three_owners.values())


@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_a_tenant_client_lists_only_its_own_subscriptions_and_deliveries(
    make_api: Callable[..., Api], three_owners: dict[str | None, str], tenant: str
) -> None:
    api = make_api(tenant=tenant)

    assert listed(api, "/api/v1/subscriptions/", "id") == {three_owners[tenant]}
    assert listed(api, "/api/v1/deliveries/", "subscription") == {three_owners[tenant]}
    assert api.get("/api/v1/subscriptions/").json()["count"] == 1
    assert api.get("/api/v1/deliveries/").json()["count"] == 1


def test_a_tenant_client_cannot_reach_another_tenants_rows_through_list_filters(
    three_owners: dict[str | None, str], acme_api: Api
) -> None:
    globex_subscription = three_owners["globex"]

    assert listed(acme_api, f"/api/v1/deliveries/?subscription={globex_subscription}", "id") == set()


# --- Isolation, end to end ---


def test_an_event_published_by_a_tenant_reaches_only_that_tenants_subscriptions(
    acme_api: Api,
    globex_api: Api,
    platform_api: Api,
    receiver: Receiver,
    second_receiver: Receiver,
    allow_loopback: None,
    subscribe: Callable[..., Subscription],
) -> None:
    acme_subscription = subscribe(receiver.url("/acme"), ["order.*"], tenant=Tenant.objects.get(slug="acme"))
    subscribe(second_receiver.url("/globex"), ["order.*"], tenant=Tenant.objects.get(slug="globex"))
    subscribe(second_receiver.url("/platform"), ["order.*"])

    response = acme_api.post("/api/v1/events/", EVENT, HTTP_X_CORRELATION_ID="isolation-1")

    assert response.status_code == 202, response.content
    assert response.json()["deliveries"] == 1
    assert deliver_batch() == 1
    [request] = receiver.requests
    assert request.path == "/acme"
    assert request.headers["webhook-id"] == response.json()["id"]
    assert request.headers["X-Correlation-Id"] == "isolation-1"
    assert json.loads(request.body)["data"] == EVENT["data"]
    assert second_receiver.requests == []
    delivery = Delivery.objects.get(event_id=response.json()["id"])
    assert delivery.subscription_id == acme_subscription.id
    assert delivery.status == Status.SUCCEEDED
    assert globex_api.get(f"/api/v1/deliveries/{delivery.id}/").status_code == 404
    assert acme_api.get(f"/api/v1/deliveries/{delivery.id}/").json()["status"] == "succeeded"


def test_an_event_without_a_tenant_reaches_only_subscriptions_without_a_tenant(
    platform_api: Api,
    acme: Tenant,
    receiver: Receiver,
    second_receiver: Receiver,
    allow_loopback: None,
    subscribe: Callable[..., Subscription],
) -> None:
    subscribe(receiver.url("/platform"), ["order.*"])
    subscribe(second_receiver.url("/acme"), ["order.*"], tenant=acme)

    response = platform_api.post("/api/v1/events/", EVENT)

    assert response.status_code == 202, response.content
    assert response.json()["tenant"] is None
    assert response.json()["deliveries"] == 1
    assert deliver_batch() == 1
    assert [request.path for request in receiver.requests] == ["/platform"]
    assert second_receiver.requests == []
