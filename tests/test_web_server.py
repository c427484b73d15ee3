"""The web server as CONTRACT.md starts it: ``gunicorn config.wsgi``, with the settings in gunicorn.conf.py."""

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import Servers, web_env


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
