"""One delivery attempt over HTTP (CONTRACT.md sections 3 and 4): headers, outcome, error forms, address guard.

Every peer is a real server on loopback (the receiver, or a raw socket where HTTP itself must misbehave).
No test connects anywhere but 127.0.0.1 or ::1, and no test resolves an outside name: `socket.getaddrinfo`
is replaced wherever a name is used, and `socket.create_connection` refuses any other address.
"""

import base64
import dataclasses
import gzip
import hashlib
import hmac
import http.client
import ipaddress
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deliveries import sender
from deliveries.sender import BlockedAddressError, Message, NameResolutionError, describe_error, safe_url
from subscriptions.addresses import is_public_address
from tests.receiver import Receiver, Reply

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
BODY = b'{"id":"evt_1","type":"order.created","timestamp":"2026-01-01T00:00:00Z","data":{"total":12}}'
LOOPBACK = ("127.0.0.1", "::1")
PRIVATE_ADDRESSES = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "10.255.255.254",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "192.0.2.1",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456:789a::1",
    "fe80::1",
    "fe80::1%eth0",
    "ff02::1",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    # IPv6 addresses carrying a non-public IPv4 address.
    "::7f00:1",  # IPv4-compatible
    "::a9fe:a9fe",
    "::ffff:0:7f00:1",  # IPv4-translated
    "::ffff:0:a00:1",
    "64:ff9b::7f00:1",  # NAT64
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::c0a8:101",
    "64:ff9b::e000:1",
    "64:ff9b:1::7f00:1",  # local-use NAT64, IPv4 in the last 32 bits
    "64:ff9b:1:7f00:0:100::",  # local-use NAT64 as a /48, IPv4 around the "u" octet
    "2002:a9fe:a9fe::",  # 6to4
    "2002:7f00:1::1",
    "2002:a00:1:1::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo is never global, whatever its client
]
PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "::ffff:0:808:808",
]


def spec_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks v1 from the spec, independent of subscriptions.signing."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def message(url: str, secrets: list[str] | None = None, body: bytes = BODY, attempt: int = 1) -> Message:
    return Message(
        url=url,
        msg_id="evt_2Lx8Qm3kz9",
        event_type="order.created",
        body=body,
        secrets=secrets or [SECRET],
        attempt=attempt,
        correlation_id="req-7f3a.1",
    )


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_receiver(reply: Callable | None = None, host: str = "127.0.0.1") -> Receiver:
    return Receiver(reply, host=host).start()


@pytest.fixture(autouse=True)
def fresh_connection_pools() -> Iterator[None]:
    """The pool is per process: drop idle keep-alive connections so one test's peer never serves another."""
    sender.pool().close()
    yield
    sender.pool().close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A safety net: any attempt to open a connection beyond loopback fails the test instead of leaving the host."""
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        if address[0] not in LOOPBACK:
            pytest.fail(f"the sender tried to connect to {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture
def never_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    def create_connection(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        pytest.fail(f"the guard let a connection to {address} through")

    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture
def block_private(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """Make one name resolve to the given addresses; returns the list of lookups made for it.

    Other lookups may only be of literal addresses (which need no DNS); anything else fails the test.
    """
    real = socket.getaddrinfo

    def install(name: str, *addresses: str, error: socket.gaierror | None = None) -> list[str]:
        lookups: list[str] = []

        def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
            if host != name:
                if not _is_literal_address(host):
                    pytest.fail(f"the sender looked up an unexpected name: {host}")
                return real(host, port, *args, **kwargs)
            lookups.append(host)
            if error:
                raise error
            return [_addrinfo(address, port) for address in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return lookups

    return install


def _is_literal_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _addrinfo(address: str, port: int) -> tuple:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))


# --- What the subscriber receives ---


def test_it_posts_the_body_with_every_contract_header(allow_loopback, receiver: Receiver) -> None:
    before = int(time.time())
    result = sender.send(message(receiver.url(), attempt=3))
    after = int(time.time())

    assert result.success
    (request,) = receiver.wait_for(1)
    headers = lower(request.headers)
    assert request.body == BODY
    assert headers["content-type"] == "application/json"
    assert re.fullmatch(r"Hookrelay/\S+", headers["user-agent"])
    assert headers["webhook-id"] == "evt_2Lx8Qm3kz9"
    assert before <= int(headers["webhook-timestamp"]) <= after
    assert headers["webhook-signature"] == spec_signature(SECRET, "evt_2Lx8Qm3kz9", headers["webhook-timestamp"], BODY)
    assert headers["x-webhook-id"] == "evt_2Lx8Qm3kz9"
    assert headers["x-webhook-event"] == "order.created"
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    assert headers["x-webhook-signature"] == "sha256=" + hmac.new(key, BODY, hashlib.sha256).hexdigest()
    assert headers["x-webhook-attempt"] == "3"
    assert headers["x-correlation-id"] == "req-7f3a.1"
    assert headers["content-length"] == str(len(BODY))


def test_during_a_rotation_it_sends_one_signature_per_secret_and_the_legacy_one_with_the_current(
    allow_loopback, receiver: Receiver
) -> None:
    sender.send(message(receiver.url(), secrets=[SECRET, OLD_SECRET]))

    headers = lower(receiver.wait_for(1)[0].headers)
    timestamp = headers["webhook-timestamp"]
    assert headers["webhook-signature"].split(" ") == [
        spec_signature(SECRET, "evt_2Lx8Qm3kz9", timestamp, BODY),
        spec_signature(OLD_SECRET, "evt_2Lx8Qm3kz9", timestamp, BODY),
    ]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    assert headers["x-webhook-signature"] == "sha256=" + hmac.new(key, BODY, hashlib.sha256).hexdigest()


def test_it_sends_the_url_with_its_query_string(allow_loopback, receiver: Receiver) -> None:
    assert sender.send(message(receiver.url("/in?token=s3cret&x=1"))).success
    assert receiver.wait_for(1)[0].path == "/in?token=s3cret&x=1"


def test_a_path_with_non_ascii_characters_is_sent_percent_encoded(allow_loopback, receiver: Receiver) -> None:
    assert sender.send(message(receiver.url("/hooks/zoë?q=東"))).success
    assert receiver.wait_for(1)[0].path == "/hooks/zo%C3%AB?q=%E6%9D%B1"


def test_the_real_receiver_gets_a_body_whose_signature_verifies(allow_loopback, receiver: Receiver) -> None:
    body = '{"id":"evt_1","data":{"name":"Zoë 東京"}}'.encode()
    result = sender.send(message(receiver.url("/hook?token=abc"), secrets=[SECRET, OLD_SECRET], body=body))

    assert result.success
    (got,) = receiver.wait_for(1)
    headers = lower(got.headers)
    assert got.path == "/hook?token=abc"
    assert got.body == body
    assert int(headers["content-length"]) == len(body)
    for secret in (SECRET, OLD_SECRET):
        expected = spec_signature(secret, headers["webhook-id"], headers["webhook-timestamp"], got.body)
        assert expected in headers["webhook-signature"].split(" ")
    assert headers["x-webhook-attempt"] == "1"
    assert headers["x-correlation-id"] == "req-7f3a.1"


# --- Outcome ---


@contextmanager
def answering(status: int, **reply: object) -> Iterator[Receiver]:
    """A receiver that answers every request with this status (and body, headers)."""
    peer = start_receiver(lambda request: Reply(status=status, **reply))
    try:
        yield peer
    finally:
        peer.stop()


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_a_success(allow_loopback, status: int) -> None:
    with answering(status, body=b"") as peer:
        result = sender.send(message(peer.url()))
    assert result.success
    assert result.error is None
    assert result.status_code == status


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308, 400, 401, 404, 410, 429, 500, 502, 503])
def test_any_other_status_is_a_failure_named_by_its_code(allow_loopback, status: int) -> None:
    with answering(status, headers={"Location": "https://elsewhere.example.com/"}) as peer:
        result = sender.send(message(peer.url()))
    assert not result.success
    assert result.error == f"HTTP {status}"
    assert result.status_code == status


def test_a_real_302_is_a_failure_and_the_target_gets_nothing(allow_loopback, receiver: Receiver) -> None:
    redirector = start_receiver(lambda request: Reply(status=302, headers={"Location": receiver.url()}))
    try:
        result = sender.send(message(redirector.url()))
    finally:
        redirector.stop()

    assert (result.status_code, result.error) == (302, "HTTP 302")
    assert len(redirector.requests) == 1
    time.sleep(0.2)
    assert receiver.requests == []


def test_a_real_500_is_a_failure_with_its_body(allow_loopback) -> None:
    failing = start_receiver(lambda request: Reply(status=500, body=b"database down"))
    try:
        result = sender.send(message(failing.url()))
    finally:
        failing.stop()

    assert not result.success
    assert (result.status_code, result.error, result.response_body) == (500, "HTTP 500", "database down")


def test_it_records_when_the_attempt_started_and_how_long_it_took(allow_loopback) -> None:
    slow = start_receiver(lambda request: Reply(delay=0.3))
    try:
        before = datetime.now(UTC)
        result = sender.send(message(slow.url()))
        after = datetime.now(UTC)
    finally:
        slow.stop()

    assert result.success
    assert before <= result.started_at <= after
    assert result.started_at.tzinfo is not None
    assert 300 <= result.duration_ms <= (after - before).total_seconds() * 1000 + 1


# --- Response body ---


def test_it_keeps_only_the_first_4096_bytes_of_the_response(allow_loopback) -> None:
    with answering(200, body=b"0123456789" * 1000) as peer:
        result = sender.send(message(peer.url()))
    assert result.response_body == ("0123456789" * 1000)[:4096]


def test_it_caps_a_long_real_response_and_the_next_send_still_works(allow_loopback) -> None:
    big = start_receiver(lambda request: Reply(body=b"x" * 1_000_000))
    try:
        first = sender.send(message(big.url()))
        second = sender.send(message(big.url()))
    finally:
        big.stop()

    assert first.response_body == "x" * 4096
    assert second.success
    assert second.response_body == "x" * 4096


def test_a_multibyte_response_is_cut_at_4096_bytes_and_kept_as_text(allow_loopback) -> None:
    with answering(200, body=("a" + "é" * 5000).encode()) as peer:
        body = sender.send(message(peer.url())).response_body
    assert body.startswith("a" + "é" * 2047)
    assert len(body) <= 2049


def test_a_response_that_is_not_utf8_or_holds_nul_is_still_stored_as_text(allow_loopback) -> None:
    with answering(200, body=b"caf\xe9 a\x00b") as peer:
        body = sender.send(message(peer.url())).response_body
    assert body.startswith("caf")
    assert "\x00" not in body
    assert body.endswith("a\ufffdb")


def test_a_gzipped_response_is_stored_decompressed(allow_loopback) -> None:
    zipped = start_receiver(
        lambda request: Reply(body=gzip.compress(b"accepted"), headers={"Content-Encoding": "gzip"})
    )
    try:
        result = sender.send(message(zipped.url()))
    finally:
        zipped.stop()
    assert result.response_body == "accepted"


def test_a_gzip_bomb_is_capped_after_decompression(allow_loopback) -> None:
    bomb = gzip.compress(b"\x00" * 20_000_000)
    bomber = start_receiver(lambda request: Reply(body=bomb, headers={"Content-Encoding": "gzip"}))
    try:
        result = sender.send(message(bomber.url()))
    finally:
        bomber.stop()
    assert result.success
    assert len(result.response_body) == 4096


def test_a_2xx_with_an_undecodable_body_is_still_a_success(allow_loopback) -> None:
    broken = start_receiver(lambda request: Reply(body=b"not gzip at all", headers={"Content-Encoding": "gzip"}))
    try:
        result = sender.send(message(broken.url()))
    finally:
        broken.stop()
    assert result.success
    assert result.status_code == 200


# --- Connections ---


def test_it_reuses_one_connection_for_several_sends(allow_loopback, receiver: Receiver) -> None:
    for attempt in range(1, 5):
        assert sender.send(message(receiver.url(), attempt=attempt)).success

    received = receiver.wait_for(4)
    assert len({request.client_port for request in received}) == 1
    assert [lower(request.headers)["x-webhook-attempt"] for request in received] == ["1", "2", "3", "4"]


def test_it_keeps_one_pool_per_process() -> None:
    assert sender.pool() is sender.pool()


def test_a_peer_slower_than_the_timeout_is_a_timeout(allow_loopback, settings) -> None:
    settings.WEBHOOK_TIMEOUT = 1
    slow = start_receiver(lambda request: Reply(delay=3))
    try:
        start = time.monotonic()
        result = sender.send(message(slow.url()))
        elapsed = time.monotonic() - start
    finally:
        slow.stop()

    assert not result.success
    assert (result.status_code, result.error) == (None, "timeout")
    assert 0.9 <= elapsed < 2.5
    assert 900 <= result.duration_ms < 2500


def test_a_closed_port_is_connection_refused(allow_loopback) -> None:
    result = sender.send(message(f"http://127.0.0.1:{closed_port()}/hook"))
    assert not result.success
    assert (result.status_code, result.error, result.response_body) == (None, "connection refused", "")


def test_a_peer_that_hangs_up_without_answering_is_a_failure(allow_loopback) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        result = sender.send(message(f"http://127.0.0.1:{port}/hook"))
    finally:
        thread.join(timeout=5)
        listener.close()

    assert not result.success
    assert result.status_code is None
    assert result.error == "connection reset"


def serve_raw(answer: Callable[[socket.socket], None], connections: int = 1) -> tuple[int, threading.Thread]:
    """A one-port TCP server on 127.0.0.1 that hands each of ``connections`` accepted sockets to ``answer``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            for _ in range(connections):
                conn, _ = listener.accept()
                with conn:
                    answer(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += conn.recv(65536)
    return head


def trickle(conn: socket.socket) -> None:
    """A raw peer's handler: reads a request, then answers a byte every 0.1 s for ten seconds."""
    read_request(conn)
    try:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)
    except OSError:
        pass


def test_a_peer_trickling_its_answer_is_cut_off_at_the_timeout(allow_loopback, settings) -> None:
    # Each byte comes well within a socket timeout, so only the attempt's deadline can end this send.
    settings.WEBHOOK_TIMEOUT = 1
    port, thread = serve_raw(trickle)
    start = time.monotonic()
    result = sender.send(message(f"http://127.0.0.1:{port}/hook"))
    elapsed = time.monotonic() - start
    thread.join(timeout=15)

    assert (result.status_code, result.error) == (None, "timeout")
    assert 0.9 <= elapsed < 1.6


def test_a_keep_alive_connection_the_peer_closed_while_idle_is_not_reused(allow_loopback) -> None:
    # HTTP/1.1 without "Connection: close", then the peer hangs up: the next send must dial again.
    answered: list[bytes] = []

    def answer_once(conn: socket.socket) -> None:
        answered.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    port, thread = serve_raw(answer_once, connections=2)
    first = sender.send(message(f"http://127.0.0.1:{port}/hook", attempt=1))
    time.sleep(0.2)  # the server has closed the first connection by now
    second = sender.send(message(f"http://127.0.0.1:{port}/hook", attempt=2))
    thread.join(timeout=5)

    assert first.success and second.success, (first, second)
    assert [b"X-Webhook-Attempt: 1" in a for a in answered] == [True, False]
    assert b"X-Webhook-Attempt: 2" in answered[1]


def answer_each(answers: list[bytes], seen: list[bytes]) -> Callable[[socket.socket], None]:
    """A raw peer's handler: for each request on one connection, the next of ``answers``."""

    def answer(conn: socket.socket) -> None:
        for reply in answers:
            seen.append(read_request(conn))
            conn.sendall(reply)

    return answer


def test_a_chunked_answer_is_read_to_its_end_and_the_connection_carries_the_next_send(allow_loopback) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    seen: list[bytes] = []
    port, thread = serve_raw(answer_each([chunked, b"HTTP/1.1 204 No Content\r\n\r\n"], seen), connections=1)

    first = sender.send(message(f"http://127.0.0.1:{port}/hook", attempt=1))
    second = sender.send(message(f"http://127.0.0.1:{port}/hook", attempt=2))
    thread.join(timeout=5)

    assert (first.status_code, first.error, first.response_body) == (200, None, "hello world")
    assert (second.status_code, second.error) == (204, None)
    assert len(seen) == 2  # both on the one connection the peer accepted


def test_interim_answers_are_skipped_for_the_final_one(allow_loopback) -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"
    )
    port, thread = serve_raw(answer_each([reply], []))
    result = sender.send(message(f"http://127.0.0.1:{port}/hook"))
    thread.join(timeout=5)
    assert (result.status_code, result.error, result.response_body) == (201, None, "created")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\n\r\nread up to the close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 20\r\n\r\nread up to the close",
        b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\nread up to the close",
        b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nContent-Length: 21\r\n\r\nread up to the close",
    ],
    ids=["no-length", "connection-close", "http-1.0", "lengths-disagree"],
)
def test_an_answer_that_ends_its_connection_is_read_and_the_next_send_dials_again(allow_loopback, reply: bytes) -> None:
    seen: list[bytes] = []
    port, thread = serve_raw(answer_each([reply], seen), connections=2)

    first = sender.send(message(f"http://127.0.0.1:{port}/hook", attempt=1))
    second = sender.send(message(f"http://127.0.0.1:{port}/hook", attempt=2))
    thread.join(timeout=5)

    assert (first.status_code, first.response_body) == (200, "read up to the close")
    assert second.success
    assert len(seen) == 2 and b"X-Webhook-Attempt: 2" in seen[1]


def test_a_2xx_whose_chunked_body_breaks_off_is_a_success_with_what_arrived(allow_loopback) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    port, thread = serve_raw(answer_each([reply], []))
    result = sender.send(message(f"http://127.0.0.1:{port}/hook"))
    thread.join(timeout=5)
    assert (result.status_code, result.error, result.response_body) == (200, None, "hel")


def test_an_answer_that_is_not_http_is_a_failure(allow_loopback) -> None:
    port, thread = serve_raw(answer_each([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], []))
    result = sender.send(message(f"http://127.0.0.1:{port}/hook"))
    thread.join(timeout=5)
    assert (result.status_code, result.error) == (None, "connection error: BadStatusLine")


def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent(
    allow_loopback, receiver: Receiver
) -> None:
    smuggling = dataclasses.replace(message(receiver.url()), correlation_id="req-1\r\nX-Injected: yes")
    result = sender.send(smuggling)
    assert (result.status_code, result.error) == (None, "connection error: ValueError")
    assert sender.send(message(receiver.url())).success
    (got,) = receiver.wait_for(1)
    assert "x-injected" not in lower(got.headers)


def behind_tls(server: Receiver, folder: Path) -> Path:
    """Put ``server`` behind TLS with a new self-signed certificate for 127.0.0.1; returns the certificate."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    return cert


@pytest.fixture
def tls_receiver(tmp_path) -> Iterator[Receiver]:
    """The receiver behind TLS with a self-signed certificate for 127.0.0.1, which no CA vouches for."""
    server = Receiver()
    behind_tls(server, tmp_path)
    server.start()
    yield server
    server.stop()


def test_an_https_endpoint_with_an_untrusted_certificate_is_a_tls_error(allow_loopback, tls_receiver) -> None:
    url = f"https://127.0.0.1:{tls_receiver.port}/hook"
    result = sender.send(message(url))
    assert (result.status_code, result.error) == (None, "tls error")
    assert tls_receiver.requests == []


def test_the_pool_keeps_a_few_idle_connections_per_host_and_closes_the_rest(allow_loopback, receiver) -> None:
    pool = sender.ConnectionPool()
    target = sender.target_of(receiver.url())
    conns = [pool.take(target, 5)[0] for _ in range(sender.IDLE_PER_HOST + 3)]
    for conn in conns:
        conn.connect()
        pool.give_back(target, conn)

    assert pool.idle_count() == sender.IDLE_PER_HOST
    assert sum(conn.sock is None for conn in conns) == 3
    reused, was_reused = pool.take(target, 5)
    assert was_reused and reused is conns[sender.IDLE_PER_HOST - 1]
    pool.close()
    assert pool.idle_count() == 0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns: Name or service not known"),
        (
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
            "dns: Temporary failure in name resolution",
        ),
    ],
)
def test_a_name_that_does_not_resolve_is_a_dns_error(
    block_private, never_connect, fake_dns: Callable[..., list[str]], error: socket.gaierror, expected: str
) -> None:
    lookups = fake_dns("hooks.example.com", error=error)
    result = sender.send(message("https://hooks.example.com/in"))
    assert lookups == ["hooks.example.com"]
    assert (result.status_code, result.error) == (None, expected)


def test_the_connection_keeps_the_name_for_the_host_header(
    allow_loopback, receiver: Receiver, fake_dns: Callable[..., list[str]]
) -> None:
    fake_dns("hooks.internal.test", "127.0.0.1")
    result = sender.send(message(f"http://hooks.internal.test:{receiver.port}/hook"))
    assert result.success
    (got,) = receiver.wait_for(1)
    assert lower(got.headers)["host"] == f"hooks.internal.test:{receiver.port}"


# --- The private-address guard ---


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_a_non_public_address_is_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_a_global_unicast_address_is_public(address: str) -> None:
    assert is_public_address(address)


def test_it_refuses_the_real_receiver_on_ipv4_loopback(block_private, receiver: Receiver, settings) -> None:
    result = sender.send(message(receiver.url()))

    assert (result.status_code, result.error, result.response_body) == (None, "blocked: private address", "")
    time.sleep(0.2)
    assert receiver.requests == []
    # Read at call time: allowing private networks lets the same endpoint through.
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    assert sender.send(message(receiver.url())).success
    assert len(receiver.wait_for(1)) == 1


def test_it_refuses_the_real_receiver_on_ipv6_loopback(block_private, settings) -> None:
    receiver = start_receiver(host="::1")
    try:
        assert receiver.url().startswith("http://[::1]:")
        result = sender.send(message(receiver.url()))
        time.sleep(0.2)
        assert result.error == "blocked: private address"
        assert receiver.requests == []
        settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
        assert sender.send(message(receiver.url())).success
        assert len(receiver.wait_for(1)) == 1
    finally:
        receiver.stop()


def test_it_refuses_localhost_by_name(block_private, receiver: Receiver) -> None:
    result = sender.send(message(f"http://localhost:{receiver.port}/hook"))
    assert result.error == "blocked: private address"
    time.sleep(0.2)
    assert receiver.requests == []


@pytest.mark.parametrize("address", [a for a in PRIVATE_ADDRESSES if "%" not in a])
def test_it_refuses_a_name_resolving_to_a_non_public_address(
    block_private, never_connect, fake_dns: Callable[..., list[str]], address: str
) -> None:
    lookups = fake_dns("hooks.example.com", address)
    result = sender.send(message("https://hooks.example.com/in"))
    assert lookups == ["hooks.example.com"]
    assert (result.status_code, result.error) == (None, "blocked: private address")


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "169.254.169.254", "::ffff:10.0.0.1", "fe80::1", "64:ff9b::7f00:1", "2002:a9fe:a9fe::"]
)
def test_it_refuses_a_literal_non_public_address_in_the_url(block_private, never_connect, address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    result = sender.send(message(f"http://{host}:8080/in"))
    assert result.error == "blocked: private address"


@pytest.mark.parametrize("answers", [("8.8.8.8", "10.0.0.1"), ("10.0.0.1", "8.8.8.8"), ("2606:4700::1", "::1")])
def test_it_refuses_a_name_resolving_to_both_public_and_private_addresses(
    block_private, never_connect, fake_dns: Callable[..., list[str]], answers: tuple[str, str]
) -> None:
    fake_dns("hooks.example.com", *answers)
    result = sender.send(message("https://hooks.example.com/in"))
    assert result.error == "blocked: private address"


def test_it_connects_to_the_address_it_checked_and_resolves_only_once(
    block_private, fake_dns: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = fake_dns("hooks.example.com", "8.8.8.8")
    dialled: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        dialled.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    result = sender.send(message("https://hooks.example.com/in"))

    assert dialled == [("8.8.8.8", 443)]
    assert lookups == ["hooks.example.com"]
    assert result.error == "connection refused"


def test_it_refuses_a_connection_whose_peer_turns_out_private(
    block_private, receiver: Receiver, fake_dns: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS answers a public address, but the socket ends up at loopback (a rebinding or NAT surprise).
    fake_dns("hooks.example.com", "8.8.8.8")
    real = socket.create_connection
    monkeypatch.setattr(
        socket,
        "create_connection",
        lambda address, timeout=None, *args, **kwargs: real(("127.0.0.1", receiver.port), timeout),
    )

    result = sender.send(message(f"http://hooks.example.com:{receiver.port}/hook"))

    assert result.error == "blocked: private address"
    time.sleep(0.2)
    assert receiver.requests == []


def test_private_addresses_are_allowed_when_the_setting_says_so(allow_loopback, receiver: Receiver) -> None:
    assert sender.send(message(receiver.url())).success
    assert len(receiver.wait_for(1)) == 1


# --- Error forms and safe URLs ---


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "timed_out", "expected"),
    [
        (TimeoutError("timed out"), False, "timeout"),
        (http.client.RemoteDisconnected("closed by the watchdog"), True, "timeout"),
        (ConnectionRefusedError(111, "Connection refused"), False, "connection refused"),
        (_caused(NameResolutionError("h"), socket.gaierror(-2, "No name")), False, "dns: No name"),
        (_caused(NameResolutionError("h"), socket.gaierror("x")), False, "dns: not resolved"),
        (BlockedAddressError("h resolves to a non-public address"), False, "blocked: private address"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), False, "tls error"),
        (http.client.RemoteDisconnected("closed"), False, "connection reset"),
        (ConnectionResetError(104, "reset"), False, "connection reset"),
        (http.client.BadStatusLine("junk"), False, "connection error: BadStatusLine"),
    ],
)
def test_describe_error_gives_the_short_contract_form(exc: BaseException, timed_out: bool, expected: str) -> None:
    assert describe_error(exc, timed_out=timed_out) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/in?token=s3cret", "https://hooks.example.com/in"),
        ("https://user:pa55@hooks.example.com/in", "https://hooks.example.com/in"),
        ("https://token@hooks.example.com:8443/a/b?x=1#frag", "https://hooks.example.com:8443/a/b"),
        ("http://[::1]:8000/hook?t=1", "http://[::1]:8000/hook"),
        ("http://127.0.0.1:9/hook", "http://127.0.0.1:9/hook"),
        ("https://hooks.example.com", "https://hooks.example.com"),
        ("https://hooks.example.com:99999/in?token=s3cret", "https://hooks.example.com:99999/in"),
    ],
)
def test_safe_url_keeps_scheme_host_and_path_only(url: str, expected: str) -> None:
    assert safe_url(url) == expected


def test_safe_url_never_raises_on_a_malformed_url() -> None:
    assert "s3cret" not in safe_url("http://[::1/in?token=s3cret")
