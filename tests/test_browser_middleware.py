"""config.browser: sessions, the signed-in user and messages are made for browser pages, never for /api/."""

from typing import Any

import pytest
from django.contrib.sessions.backends.base import SessionBase
from django.test import Client
from rest_framework.test import APIClient

from tests.conftest import Api


class SessionMade(Exception):
    pass


class SessionStore(SessionBase):
    """The session engine while these tests run (``SESSION_ENGINE`` names this module): it cannot be made."""

    def __init__(self, session_key: str | None = None) -> None:
        raise SessionMade


def test_api_requests_are_answered_without_a_session_user_or_message_store(settings: Any, platform_api: Api) -> None:
    settings.SESSION_ENGINE = __name__  # after the token: /oauth/token/ is not under /api/
    api = APIClient(HTTP_HOST="localhost")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {platform_api.token}")

    listed = api.get("/api/v1/subscriptions/")
    published = api.post("/api/v1/events/", {"type": "order.created", "data": {"n": 1}}, format="json")
    refused = APIClient(HTTP_HOST="localhost").get("/api/v1/subscriptions/")

    assert (listed.status_code, published.status_code, refused.status_code) == (200, 202, 401)
    assert not listed.cookies and not published.cookies


def test_browser_pages_still_get_a_session(settings: Any, db: None) -> None:
    settings.SESSION_ENGINE = __name__

    with pytest.raises(SessionMade):
        Client(HTTP_HOST="localhost").get("/admin/login/")
