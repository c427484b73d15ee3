"""No input, however malformed, gets a 5xx, and every answer is JSON (CONTRACT.md section 3).

Generated bodies go to every write endpoint, generated query strings to every list endpoint and arbitrary
text (NUL and lone surrogates included) into every id route and every filter. Bodies are
encoded here (``json.dumps`` escapes lone surrogates such as ``\\ud800``, which a real client may send) and
sent as raw bytes, so the server's own parser sees them exactly as a client would send them.
"""

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from django.http import HttpResponse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from deliveries.models import Delivery
from subscriptions.models import Subscription, Tenant
from tests.conftest import Api
from webhooks import publish

pytestmark = pytest.mark.django_db

FUZZ = hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.fixture(autouse=True)
def fast_client_secret_hashing(settings) -> None:
    """OAuth2 client secrets are stored hashed; the production hasher costs about a second per client."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class World:
    """A tenant client, a platform client, and one subscription with one delivery for them to poke at."""

    acme: Api
    platform: Api
    subscription: Subscription
    delivery: Delivery

    def api(self, platform: bool) -> Api:
        return self.platform if platform else self.acme


@pytest.fixture
def world(acme_api: Api, platform_api: Api) -> Iterator[World]:
    Tenant.objects.create(slug="globex")
    acme = Tenant.objects.get(slug="acme")
    subscription = Subscription.objects.create(url="https://hooks.example.com/", events=["#"], tenant=acme)
    event = publish("order.created", {"n": 1}, tenant=acme)
    for api in (acme_api, platform_api):
        # A 500 is answered as a client would see it (handler500), so one test can list every failing input.
        api.http.raise_request_exception = False
    yield World(acme_api, platform_api, subscription, Delivery.objects.get(event=event))


# --- Strategies ---

NASTY_CHARACTERS = ["\x00", "\ud800", "\udfff", "\u2028", "\ufeff", "é", "💥", ".", "*", "#", "%", "/", "@", ":", " "]
any_char = st.characters(exclude_categories=()) | st.sampled_from(NASTY_CHARACTERS)
texts = st.text(any_char, max_size=40)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63) | st.floats(allow_nan=False) | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)

hosts = st.sampled_from(
    ["hooks.example.com", "127.0.0.1", "[::1]", "0x7f.1", "[::ffff:127.0.0.1]", "10.0.0.1", "[", "]", "a" * 300, ""]
)
urls = st.builds(
    "{}://{}{}{}".format,
    st.sampled_from(["http", "https", "ftp", "HTTP", "javascript", "", "http:"]),
    st.sampled_from(["", "user:pass@", "@", ":@"]),
    hosts | texts,
    st.sampled_from(["", ":", ":0", ":99999", ":-1", ":80"]).map(str) | texts,
)
patterns = st.text(st.sampled_from("abz09_-.*#A \x00\ud800é"), max_size=30) | texts
secrets = st.builds(lambda raw: "whsec_" + base64.b64encode(raw).decode(), st.binary(max_size=80)) | texts
timestamps = st.datetimes(timezones=st.none() | st.timezones()).map(lambda moment: moment.isoformat()) | texts
tenants = st.sampled_from(["acme", "globex", "nobody", "", "ACME"]) | texts


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Three draws in four from ``good``: valid values carry a body past validation, to the code that stores it."""
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 0 else good)


FIELDS = {
    "url": mostly(st.sampled_from(["https://hooks.example.com/a", "http://93.184.215.14/"]), urls | json_values),
    "events": mostly(st.lists(st.sampled_from(["#", "order.*"]), min_size=1), st.lists(patterns | json_values)),
    "description": mostly(st.text(any_char, max_size=600), json_values),
    "is_active": mostly(st.booleans(), json_values),
    "secret": mostly(secrets, json_values),
    "tenant": mostly(st.sampled_from(["acme", "globex"]), tenants | json_values),
    "since": mostly(timestamps, json_values),
    "type": mostly(st.sampled_from(["order.created", "invoice.paid"]), patterns | json_values),
    "data": mostly(st.dictionaries(texts, json_values, max_size=4), json_values),
}


def bodies(required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> st.SearchStrategy:
    """Mostly bodies shaped like the endpoint's own; else any of the known fields, or any JSON value at all."""
    shaped = st.fixed_dictionaries({n: FIELDS[n] for n in required}, optional={n: FIELDS[n] for n in optional})
    return mostly(shaped, st.fixed_dictionaries({}, optional=FIELDS) | json_values)


NASTY_RAW = [
    b"",
    b"{",
    b'{"url": NaN}',
    b'{"events": [Infinity]}',
    b'{"since": -Infinity}',
    b'{"description": "\\ud800"}',
    b'{"url": "https://hooks.example.com/\\udfff", "events": ["#"]}',
    b'{"type": "order.created", "data": {"k": "\\u0000"}}',
    b'{"type": "order.created", "data": {"\\u0000": 1}}',
    b'{"type": "order.created", "data": {"k": "\\ud800"}}',
    b'{"tenant": "\\u0000", "url": "https://hooks.example.com/", "events": ["#"]}',
    b'{"since": "2024-01-01T00:00:00\\u0000"}',
    b'{"data": {"n": 1e999999}, "type": "order.created"}',
    b'{"data": {"n": 123456789012345678901234567890}, "type": "order.created"}',
    b"\xff\xfe{\x00}\x00",
    b"\xef\xbb\xbf{}",
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b'{"url": "x", "url": "y"}',
]
raw_bodies = st.sampled_from(NASTY_RAW) | st.binary(max_size=300)

QUERY_NAMES = ["page", "page_size", "is_active", "event", "subscription", "status", "event_type", "format", "ordering"]
QUERY_CHARACTERS = ["\x00", "%", "&", "=", "-", "0", "7", "²", "١", "０", "."]
query_values = st.text(st.characters(exclude_categories=("Cs",)) | st.sampled_from(QUERY_CHARACTERS), max_size=30)
query_strings = st.dictionaries(st.sampled_from(QUERY_NAMES) | st.text(max_size=8), query_values, max_size=4)
NASTY_QUERIES = [
    "page=%00",
    "page=%C2%B2",
    "page_size=%C2%B2",
    "page_size=%D9%A1",
    "event=%ff%fe",
    "event=%00",
    "event=%ED%A0%80",
    "subscription=%00",
    "status=%00",
    "event_type=%00",
    "page_size=1e3",
    "page=99999999999999999999",
    "page_size=99999999999999999999",
    "is_active=maybe",
    "is_active=%00",
    "page=1&page=x",
]
raw_query_strings = st.binary(max_size=120).map(lambda raw: raw.decode("latin-1")) | st.sampled_from(NASTY_QUERIES)


# --- Targets ---


@dataclass(frozen=True)
class Target:
    method: str
    path: str  # formatted with the World
    bodies: st.SearchStrategy

    def __call__(self, world: World) -> tuple[str, str]:
        return self.method, self.path.format(w=world)


SUBSCRIPTION = "/api/v1/subscriptions/{w.subscription.id}/"
WRITES: dict[str, Target] = {
    "create subscription": Target(
        "POST", "/api/v1/subscriptions/", bodies(("url", "events"), ("description", "is_active", "secret", "tenant"))
    ),
    "patch subscription": Target("PATCH", SUBSCRIPTION, bodies((), ("url", "events", "description", "is_active"))),
    "put subscription": Target("PUT", SUBSCRIPTION, bodies(("url", "events"), ("description", "is_active"))),
    "rotate secret": Target("POST", SUBSCRIPTION + "rotate-secret/", bodies((), ("secret",))),
    "recover": Target("POST", SUBSCRIPTION + "recover/", bodies(("since",))),
    "publish event": Target("POST", "/api/v1/events/", bodies(("type", "data"), ("tenant",))),
    "redeliver": Target("POST", "/api/v1/deliveries/{w.delivery.id}/redeliver/", bodies()),
}
# Redeliver takes no body: it is fuzzed above, but a body it ignores has no 4xx to expect.
BODY_WRITES = {name: call for name, call in WRITES.items() if name != "redeliver"}
LISTS = ["/api/v1/subscriptions/", "/api/v1/deliveries/", "/api/v1/event-types/"]


def encode(value: object) -> bytes:
    """JSON as a lenient client library sends it: lone surrogates escaped, infinities spelled Infinity."""
    return json.dumps(value, allow_nan=True).encode()


def send(api: Api, method: str, path: str, body: bytes, content_type: str = "application/json") -> HttpResponse:
    return api.http.generic(method, path, body, content_type=content_type)


def assert_answered_in_json(response: HttpResponse) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    if response.status_code != 204:
        assert isinstance(json.loads(response.content), dict | list)


# --- Properties ---


@pytest.mark.parametrize("target", WRITES.values(), ids=WRITES.keys())
@FUZZ
@given(data=st.data(), platform=st.booleans())
def test_a_generated_json_body_never_gets_a_5xx(
    world: World, target: Target, data: st.DataObject, platform: bool
) -> None:
    method, path = target(world)
    body = data.draw(target.bodies, label="body")

    response = send(world.api(platform), method, path, encode(body))

    assert_answered_in_json(response)


@pytest.mark.parametrize("target", WRITES.values(), ids=WRITES.keys())
@FUZZ
@given(body=raw_bodies, platform=st.booleans())
def test_random_bytes_as_json_never_get_a_5xx(world: World, target: Target, body: bytes, platform: bool) -> None:
    method, path = target(world)

    response = send(world.api(platform), method, path, body)

    assert_answered_in_json(response)


@pytest.mark.parametrize("path", LISTS)
@FUZZ
@given(query=query_strings, platform=st.booleans())
def test_a_generated_query_string_never_gets_a_5xx(world: World, path: str, query: dict, platform: bool) -> None:
    response = world.api(platform).get(path, data=query)

    assert_answered_in_json(response)


@pytest.mark.parametrize("path", LISTS)
@FUZZ
@given(raw=raw_query_strings, platform=st.booleans())
def test_a_raw_query_string_never_gets_a_5xx(world: World, path: str, raw: str, platform: bool) -> None:
    response = world.api(platform).http.generic("GET", path, QUERY_STRING=raw)

    assert_answered_in_json(response)


# --- Arbitrary text in every id and every filter, NUL and lone surrogates included ---

ID_FUZZ = hypothesis_settings(FUZZ, max_examples=150)
ID_ROUTES = [
    ("GET", "subscriptions/{}/"),
    ("PATCH", "subscriptions/{}/"),
    ("DELETE", "subscriptions/{}/"),
    ("GET", "subscriptions/{}/secret/"),
    ("POST", "subscriptions/{}/rotate-secret/"),
    ("POST", "subscriptions/{}/ping/"),
    ("POST", "subscriptions/{}/recover/"),
    ("GET", "deliveries/{}/"),
    ("POST", "deliveries/{}/redeliver/"),
]
FILTERS = {
    "/api/v1/subscriptions/": ["is_active", "event", "page", "page_size"],
    "/api/v1/deliveries/": ["subscription", "status", "event_type", "event", "page", "page_size"],
}
id_texts = st.text(any_char, max_size=30) | st.builds("{}{}".format, st.sampled_from(["sub_", "dlv_"]), texts)


def percent_encoded(text: str) -> str:
    """Every character percent-encoded as UTF-8; a lone surrogate as the bytes a lenient encoder makes."""
    return quote(text, safe="", errors="surrogatepass")


@ID_FUZZ
@given(
    route=st.sampled_from(ID_ROUTES),
    prefix=st.sampled_from(["/api/v1/", "/api/"]),
    text=id_texts,
    platform=st.booleans(),
)
def test_any_text_as_an_id_never_gets_a_5xx(
    world: World, route: tuple[str, str], prefix: str, text: str, platform: bool
) -> None:
    method, template = route

    response = send(world.api(platform), method, prefix + template.format(percent_encoded(text)), b"{}")

    assert_answered_in_json(response)
    if "\x00" in text:
        assert response.status_code == 404


@ID_FUZZ
@given(data=st.data(), path=st.sampled_from(list(FILTERS)), platform=st.booleans())
def test_any_text_in_any_filter_never_gets_a_5xx(world: World, data: st.DataObject, path: str, platform: bool) -> None:
    query = data.draw(st.dictionaries(st.sampled_from(FILTERS[path]), st.text(any_char, max_size=30), min_size=1))
    raw = "&".join(f"{name}={percent_encoded(value)}" for name, value in query.items())

    response = world.api(platform).http.generic("GET", path, QUERY_STRING=raw)

    assert_answered_in_json(response)
    assert response.status_code in (200, 400, 404)


# --- Known troublemakers, every one at every endpoint ---


def answers_not_in_json(response: HttpResponse) -> str | None:
    try:
        assert_answered_in_json(response)
    except AssertionError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("target", WRITES.values(), ids=WRITES.keys())
def test_no_known_nasty_body_gets_a_5xx(world: World, target: Target) -> None:
    method, path = target(world)

    failures = [
        (body[:80], problem)
        for body in NASTY_RAW
        for platform in (False, True)
        if (problem := answers_not_in_json(send(world.api(platform), method, path, body)))
    ]

    assert failures == []


@pytest.mark.parametrize("path", LISTS)
def test_no_known_nasty_query_string_gets_a_5xx(world: World, path: str) -> None:
    failures = [
        (raw, problem)
        for raw in NASTY_QUERIES
        for platform in (False, True)
        if (problem := answers_not_in_json(world.api(platform).http.generic("GET", path, QUERY_STRING=raw)))
    ]

    assert failures == []


# --- Bodies no generator above makes ---


@pytest.mark.parametrize("target", BODY_WRITES.values(), ids=BODY_WRITES.keys())
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
)
def test_a_body_that_is_not_json_gets_a_json_4xx(world: World, target: Target, content_type: str) -> None:
    method, path = target(world)

    response = send(world.acme, method, path, b"url=https%3A%2F%2Fhooks.example.com%2F&events=%23", content_type)

    assert_answered_in_json(response)
    assert response.status_code in (400, 415)


@pytest.mark.parametrize("target", BODY_WRITES.values(), ids=BODY_WRITES.keys())
def test_a_two_megabyte_body_gets_a_json_4xx(world: World, target: Target) -> None:
    method, path = target(world)
    body = encode({"url": "https://hooks.example.com/", "events": ["#"], "description": "d" * (2 * 1024 * 1024)})

    response = send(world.acme, method, path, body)

    assert_answered_in_json(response)
    assert 400 <= response.status_code < 500
