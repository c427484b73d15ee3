"""Issue 5: API versions by URL (/api/v1/) or by Accept header, and RFC 9745 / RFC 8594 deprecation headers."""

from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from subscriptions.models import Subscription
from tests.conftest import Api
from webhooks.models import Event

VENDOR = "application/vnd.hookrelay+json"
V1 = f"{VENDOR}; version=1"
DEPRECATED_AT = "2026-03-01T00:00:00Z"
SUNSET_AT = "2027-01-31T12:30:00Z"


@pytest.fixture(autouse=True)
def fast_secret_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def subscription(db: None) -> Subscription:
    return Subscription.objects.create(url="https://example.com/hook", events=["order.*"])


@pytest.fixture
def v1_deprecated(settings: Any) -> None:
    settings.API_DEPRECATIONS = {"1": {"deprecation": DEPRECATED_AT, "sunset": SUNSET_AT}}


# --- Negotiation ---


def test_version_1_by_url_answers_plain_json(platform_api: Api, subscription: Subscription) -> None:
    response = platform_api.get("/api/v1/subscriptions/")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert [s["id"] for s in response.json()["results"]] == [subscription.id]


@pytest.mark.parametrize("accept", [V1, f"{VENDOR};version=1", f"{VENDOR}; version=1, application/json;q=0.5"])
def test_version_1_by_header_serves_the_same_resources_in_the_vendor_media_type(
    platform_api: Api, subscription: Subscription, accept: str
) -> None:
    by_url = platform_api.get(f"/api/v1/subscriptions/{subscription.id}/")

    by_header = platform_api.get(f"/api/subscriptions/{subscription.id}/", HTTP_ACCEPT=accept)

    assert by_header.status_code == 200
    assert by_header["Content-Type"].split(";")[0].strip() == VENDOR
    assert by_header.json() == by_url.json()


def test_writes_by_header_work_like_writes_by_url(platform_api: Api, subscription: Subscription) -> None:
    response = platform_api.post(
        "/api/events/", {"type": "order.created", "data": {"n": 1}}, HTTP_ACCEPT=V1, HTTP_X_CORRELATION_ID="by-header"
    )

    assert response.status_code == 202
    assert response["Content-Type"].startswith(VENDOR)
    assert response.json()["deliveries"] == 1


def test_the_vendor_type_without_a_version_means_the_current_one(platform_api: Api) -> None:
    response = platform_api.get("/api/subscriptions/", HTTP_ACCEPT=VENDOR)

    assert response.status_code == 200
    assert response["Content-Type"].startswith(VENDOR)


def test_plain_json_on_the_header_mount_means_the_current_version(platform_api: Api) -> None:
    response = platform_api.get("/api/subscriptions/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize("version", ["v2", "v0", "v10"])
def test_an_unknown_version_in_the_url_is_404_in_json(platform_api: Api, version: str) -> None:
    response = platform_api.get(f"/api/{version}/subscriptions/")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"]


@pytest.mark.parametrize("version", ["2", "0", "1.1", "abc"])
def test_an_unknown_version_in_the_accept_header_is_406_in_json(platform_api: Api, version: str) -> None:
    response = platform_api.get("/api/subscriptions/", HTTP_ACCEPT=f"{VENDOR}; version={version}")

    assert response.status_code == 406
    assert response.json()["detail"]


def test_an_unknown_header_version_changes_nothing(platform_api: Api) -> None:
    response = platform_api.post(
        "/api/events/", {"type": "order.created", "data": {}}, HTTP_ACCEPT=f"{VENDOR}; version=2"
    )

    assert response.status_code == 406
    assert not Event.objects.exists()


# --- Deprecation (RFC 9745) and Sunset (RFC 8594) ---


def unix_seconds(instant: str) -> int:
    return int(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp())


def test_a_deprecated_version_says_so_by_url_and_by_header(platform_api: Api, v1_deprecated: None) -> None:
    by_url = platform_api.get("/api/v1/subscriptions/")
    by_header = platform_api.get("/api/subscriptions/", HTTP_ACCEPT=V1)

    for response in (by_url, by_header):
        assert response.status_code == 200
        # RFC 9745: a structured-field Date, "@" and unix seconds.
        assert response["Deprecation"] == f"@{unix_seconds(DEPRECATED_AT)}" == "@1772323200"
        # RFC 8594: an HTTP-date (RFC 9110 IMF-fixdate), always GMT.
        assert response["Sunset"] == "Sun, 31 Jan 2027 12:30:00 GMT"


def test_deprecation_headers_come_on_error_answers_too(v1_deprecated: None, db: None) -> None:
    unauthenticated = Client().get("/api/v1/subscriptions/")
    missing = Client().get("/api/v1/no-such-thing/")

    for response in (unauthenticated, missing):
        assert response.status_code in (401, 404)
        assert response["Deprecation"] == "@1772323200"
        assert response["Sunset"] == "Sun, 31 Jan 2027 12:30:00 GMT"


@pytest.mark.parametrize(
    ("sunset", "header"),
    [
        ("2027-06-30T23:00:00-02:00", "Thu, 01 Jul 2027 01:00:00 GMT"),
        ("2027-06-30T23:00:00+00:00", "Wed, 30 Jun 2027 23:00:00 GMT"),
        ("2027-06-30T23:00:00", "Wed, 30 Jun 2027 23:00:00 GMT"),
        ("2027-06-30", "Wed, 30 Jun 2027 00:00:00 GMT"),
    ],
)
def test_a_sunset_in_any_iso_8601_spelling_is_sent_in_gmt(
    settings: Any, platform_api: Api, sunset: str, header: str
) -> None:
    settings.API_DEPRECATIONS = {"1": {"sunset": sunset}}

    response = platform_api.get("/api/v1/subscriptions/")

    assert response.status_code == 200
    assert response["Sunset"] == header
    assert "Deprecation" not in response


def test_a_deprecation_time_without_an_offset_is_utc(settings: Any, platform_api: Api) -> None:
    settings.API_DEPRECATIONS = {"1": {"deprecation": "2026-03-01T00:00:00"}}

    response = platform_api.get("/api/v1/subscriptions/")

    assert response["Deprecation"] == "@1772323200"


@pytest.mark.parametrize("notice", [{"sunset": "next spring"}, {"deprecation": "2026-13-01"}])
def test_a_malformed_deprecation_setting_stops_the_web_process_at_its_first_request(
    settings: Any, notice: dict[str, str]
) -> None:
    settings.API_DEPRECATIONS = {"1": notice}

    with pytest.raises(ImproperlyConfigured):
        Client().get("/healthz")


def test_a_deprecation_without_a_sunset_date_sends_only_deprecation(settings: Any, platform_api: Api) -> None:
    settings.API_DEPRECATIONS = {"1": {"deprecation": "2026-01-01T00:00:00Z", "sunset": ""}}

    response = platform_api.get("/api/v1/subscriptions/")

    assert response["Deprecation"] == f"@{int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())}"
    assert "Sunset" not in response


def test_a_current_version_has_neither_header(settings: Any, platform_api: Api) -> None:
    settings.API_DEPRECATIONS = {"1": {"deprecation": "", "sunset": ""}}

    for response in (platform_api.get("/api/v1/subscriptions/"), platform_api.get("/api/subscriptions/")):
        assert "Deprecation" not in response and "Sunset" not in response


def test_another_versions_deprecation_is_not_sent_with_version_1(settings: Any, platform_api: Api) -> None:
    settings.API_DEPRECATIONS = {"1": {}, "0": {"deprecation": DEPRECATED_AT, "sunset": SUNSET_AT}}

    for response in (
        platform_api.get("/api/v1/subscriptions/"),
        platform_api.get("/api/subscriptions/", HTTP_ACCEPT=V1),
    ):
        assert "Deprecation" not in response and "Sunset" not in response


def test_paths_outside_the_api_carry_no_deprecation_headers(v1_deprecated: None, db: None) -> None:
    for path in ("/healthz", "/metrics", "/admin/login/"):
        response = Client().get(path)
        assert "Deprecation" not in response and "Sunset" not in response, path
