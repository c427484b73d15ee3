"""The web server as CONTRACT.md starts it: ``gunicorn config.wsgi``, with the settings in gunicorn.conf.py, and
``manage.py runserver`` for development."""

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.conf import settings

from tests.conftest import Api, database_url
from tests.processes import ROOT, HttpServer, Servers, web_env
from webhooks.models import Event


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with Servers(tmp_path, web_env(tmp_path)) as started:
        yield started


def test_gunicorn_config_wsgi_answers_on_kept_alive_connections(servers: Servers) -> None:
    web = servers.web(workers=None, threads=None)  # nothing on the command line but the address
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    try:
        connection.request("GET", "/ready-probe")
        first = connection.getresponse()
        first.read()
        socket_used = connection.sock
        connection.request("GET", "/ready-probe")
        second = connection.getresponse()
        second.read()
        reused = socket_used is not None and connection.sock is socket_used
    finally:
        connection.close()

    # A sync worker says "Connection: close" and drops the socket: the second request then needs a new one.
    assert (first.getheader("Connection") or "").lower() != "close"
    assert reused
    assert second.status == first.status


# --- Request bodies over a raw socket: oversize ones get their 413, chunked ones are read ---


@dataclass(frozen=True)
class Site:
    """A migrated database with an API client, served by gunicorn (as in production) and by runserver."""

    gunicorn: HttpServer
    runserver: HttpServer
    token: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("site")
    env = web_env(directory, API_RATE_LIMIT_ANON="100000/min", API_RATE_LIMIT="100000/min")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
    created = subprocess.run(
        [*manage, "create_api_client", "chunked", "--tenant", "acme"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    client = json.loads(created.stdout)
    with Servers(directory, env) as servers:
        gunicorn = servers.web(workers=1, threads=None)
        token = requests.post(
            gunicorn.url("/oauth/token/"),
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
            timeout=30,
        ).json()["access_token"]
        yield Site(gunicorn, servers.runserver(), token)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers["Content-Type"]
        return json.loads(self.body)


def exchange(server: HttpServer, head: str, body: bytes, piece: int = 16 * 1024) -> Answer:
    """Send as a client uploading over a real network does, a piece at a time, then read the answer.

    A server that answers and closes before reading the body resets the connection: the sending or the
    reading here raises ConnectionResetError (or BrokenPipeError), which fails the test.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1"))
        for start in range(0, len(body), piece):
            sock.sendall(body[start : start + piece])
            time.sleep(0.0005)  # the server answers while the body is still arriving
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, response.headers, response.read())


def request_head(path: str, token: str | None, length: int | None, close: bool = False) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"Authorization: Bearer {token}"] if token else []
    lines += [f"Content-Length: {length}"] if length is not None else ["Transfer-Encoding: chunked"]
    lines += ["Connection: close"] if close else []
    return "\r\n".join(lines) + "\r\n\r\n"


def event(size: int = 0) -> bytes:
    return json.dumps({"type": "order.created", "data": {"padding": "x" * size}}).encode()


def chunked(body: bytes, size: int = 8000) -> bytes:
    pieces = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("server", ["gunicorn", "runserver"])
@pytest.mark.parametrize("size", [300 * 1024, 3 * 1024 * 1024])
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_a_client_sending_an_oversize_event_reads_its_413(site: Site, server: str, size: int, close: bool) -> None:
    body = event(size)
    for _ in range(4):
        answer = exchange(getattr(site, server), request_head("/api/v1/events/", site.token, len(body), close), body)

        assert answer.status == 413
        assert "detail" in answer.json()


def test_a_refused_upload_does_not_spoil_the_kept_alive_connection(site: Site) -> None:
    oversize, fine = event(300 * 1024), event()
    with socket.create_connection(("127.0.0.1", site.gunicorn.port), timeout=30) as sock:
        statuses = []
        for body in (oversize, fine, oversize, fine):
            sock.sendall(request_head("/api/v1/events/", site.token, len(body)).encode() + body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            response.read()
            statuses.append(response.status)

    assert statuses == [413, 202, 413, 202]


def test_gunicorn_reads_a_chunked_event_like_one_with_a_length(site: Site) -> None:
    body = event(20_000)

    answer = exchange(site.gunicorn, request_head("/api/v1/events/", site.token, None), chunked(body))

    assert answer.status == 202, answer.body
    assert answer.json()["type"] == "order.created"


def test_gunicorn_reads_a_chunked_subscription_like_one_with_a_length(site: Site) -> None:
    body = json.dumps({"url": "https://93.184.215.14/hook", "events": ["order.*"], "description": "d" * 400})

    answer = exchange(site.gunicorn, request_head("/api/v1/subscriptions/", site.token, None), chunked(body.encode()))

    assert answer.status == 201, answer.body
    assert answer.json()["url"] == "https://93.184.215.14/hook"
    assert answer.json()["description"] == "d" * 400


@pytest.mark.parametrize("size", [300 * 1024, 3 * 1024 * 1024])
def test_a_chunked_event_over_the_limit_gets_its_413(site: Site, size: int) -> None:
    for _ in range(3):
        answer = exchange(site.gunicorn, request_head("/api/v1/events/", site.token, None), chunked(event(size)))

        assert answer.status == 413
        assert "detail" in answer.json()


def test_runserver_refuses_a_chunked_body_with_411_instead_of_reading_it_as_empty(site: Site) -> None:
    # Django's development server hands the application no de-chunked body to read.
    answer = exchange(site.runserver, request_head("/api/v1/events/", site.token, None, close=True), chunked(event()))

    assert answer.status == 411
    assert "Content-Length" in answer.json()["detail"]


@pytest.mark.services
def test_chunked_events_take_both_ingest_paths_on_postgresql(transactional_db, tmp_path: Path, acme_api: Api) -> None:
    services = {"REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    with Servers(tmp_path, web_env(tmp_path, DATABASE_URL=database_url(), **services)) as servers:
        web = servers.web(workers=1, threads=1)
        # The first request checks the token through DRF; the next ones publish below it (webhooks.ingest).
        answers = [
            exchange(web, request_head("/api/v1/events/", acme_api.token, None), chunked(event(n * 1000)))
            for n in range(3)
        ]
        oversize = exchange(web, request_head("/api/v1/events/", acme_api.token, None), chunked(event(300 * 1024)))

    assert [answer.status for answer in answers] == [202, 202, 202]
    assert sorted(len(e.data["padding"]) for e in Event.objects.all()) == [0, 1000, 2000]
    assert oversize.status == 413
