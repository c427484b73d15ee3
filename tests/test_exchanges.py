"""Sends multiplexed in the drain's thread on open keep-alive connections (``sender.Exchanges``, issue 6).

The first send to a peer opens the connection on the blocking path (``sender.send``); the next one goes
through ``Exchanges`` on that connection. Each answer is checked against what the blocking path makes of
the same answer from a twin peer: one parser, the same outcome, the same decision to keep the connection.
Every peer is a real server on 127.0.0.1.
"""

import dataclasses
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from deliveries import sender, worker
from deliveries.models import Delivery, Status
from deliveries.sender import Result
from subscriptions.models import Subscription
from tests.receiver import Receiver, Reply
from tests.test_sender import (
    SECRET,
    answer_each,
    behind_tls,
    lower,
    message,
    read_request,
    serve_raw,
    spec_signature,
    trickle,
)
from tests.test_slow_lane import SlowPeer
from webhooks import publish

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(autouse=True)
def fresh_connection_pools() -> Iterator[None]:
    sender.pool().close()
    yield
    sender.pool().close()


def multiplexed(msg: sender.Message, wait: float = 10.0) -> Result | None:
    """One send through a fresh ``Exchanges``; None if it had no open connection to send on."""
    exchanges = sender.Exchanges()
    try:
        if not exchanges.start("the key", msg):
            return None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for key, result in exchanges.wait(0.5):
                assert key == "the key"
                return result
        raise AssertionError("the send never ended")
    finally:
        exchanges.close()


def outcome(result: Result) -> tuple:
    return result.status_code, result.error, result.response_body


def second_answer(reply: bytes, multiplex: bool) -> tuple[Result, int]:
    """A raw peer answers OK, then ``reply``, on one connection; the second send's result and how many
    connections the pool kept afterwards."""
    port, thread = serve_raw(answer_each([OK, reply], []))
    url = f"http://127.0.0.1:{port}/hook"
    assert sender.send(message(url, attempt=1)).success
    second = message(url, attempt=2)
    result = multiplexed(second) if multiplex else sender.send(second)
    thread.join(timeout=5)
    kept = sender.pool().idle_count()
    sender.pool().close()
    return result, kept


ANSWERS = {
    "chunked-with-trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
    "interim-answers": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated",
    "no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "error-with-body": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown",
    "gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
    % (len(gzip.compress(b"accepted")), gzip.compress(b"accepted")),
    "undecodable-gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nbad",
    "up-to-the-close": b"HTTP/1.1 200 OK\r\n\r\nread up to the close",
    "connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\ndone",
    "http-1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\ndone",
    "chunked-broken-off": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    "length-broken-off": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
    "bytes-after-the-answer": OK + b"junk",
    "not-http": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    "headers-then-close": b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n",
    "nothing-then-close": b"",
}


@pytest.mark.parametrize("reply", ANSWERS.values(), ids=ANSWERS.keys())
def test_an_answer_means_the_same_multiplexed_as_on_a_send_thread(allow_loopback, reply: bytes) -> None:
    threaded, kept_threaded = second_answer(reply, multiplex=False)
    multiplexed_, kept_multiplexed = second_answer(reply, multiplex=True)

    assert outcome(multiplexed_) == outcome(threaded)
    assert kept_multiplexed == kept_threaded


def test_the_answers_it_reads_are_the_ones_the_peer_wrote(allow_loopback) -> None:
    # The parity above would pass if both paths misread alike: pin a few outcomes down.
    assert outcome(second_answer(ANSWERS["chunked-with-trailer"], multiplex=True)[0]) == (200, None, "hello world")
    assert second_answer(ANSWERS["chunked-with-trailer"], multiplex=True)[1] == 1  # the connection carries on
    assert outcome(second_answer(ANSWERS["gzip"], multiplex=True)[0]) == (200, None, "accepted")
    assert outcome(second_answer(ANSWERS["error-with-body"], multiplex=True)[0]) == (503, "HTTP 503", "down")
    assert outcome(second_answer(ANSWERS["not-http"], multiplex=True)[0]) == (
        None,
        "connection error: BadStatusLine",
        "",
    )
    assert outcome(second_answer(ANSWERS["nothing-then-close"], multiplex=True)[0])[1] == "connection reset"
    assert second_answer(ANSWERS["up-to-the-close"], multiplex=True)[1] == 0


def test_the_receiver_gets_the_same_signed_request_as_from_a_send_thread(allow_loopback, receiver: Receiver) -> None:
    body = '{"id":"evt_1","data":{"name":"Zoë"}}'.encode()
    assert sender.send(message(receiver.url("/hook?x=1"), body=body, attempt=1)).success
    result = multiplexed(message(receiver.url("/hook?x=1"), body=body, attempt=2))

    assert result is not None and result.success and result.response_body == "ok"
    first, second = receiver.wait_for(2)
    assert second.client_port == first.client_port  # on the connection the first send opened
    assert (second.path, second.body) == ("/hook?x=1", body)
    headers = lower(second.headers)
    assert set(headers) == set(lower(first.headers))
    assert headers["x-webhook-attempt"] == "2"
    expected = spec_signature(SECRET, headers["webhook-id"], headers["webhook-timestamp"], body)
    assert headers["webhook-signature"] == expected


def test_without_an_open_connection_it_sends_nothing_and_says_so(allow_loopback, receiver: Receiver) -> None:
    assert multiplexed(message(receiver.url())) is None
    time.sleep(0.1)
    assert receiver.requests == []


def test_a_request_it_cannot_write_is_left_to_the_blocking_path_and_the_connection_kept(
    allow_loopback, receiver: Receiver
) -> None:
    assert sender.send(message(receiver.url())).success
    smuggling = dataclasses.replace(message(receiver.url()), correlation_id="req-1\r\nX-Injected: yes")

    assert multiplexed(smuggling) is None
    assert sender.pool().idle_count() == 1
    assert outcome(sender.send(smuggling)) == (None, "connection error: ValueError", "")
    assert len(receiver.requests) == 1


def test_a_connection_the_peer_closed_while_idle_is_not_used(allow_loopback) -> None:
    port, thread = serve_raw(answer_each([OK], []))  # answers once, then hangs up
    assert sender.send(message(f"http://127.0.0.1:{port}/hook")).success
    thread.join(timeout=5)
    time.sleep(0.1)
    assert multiplexed(message(f"http://127.0.0.1:{port}/hook")) is None


def test_a_large_body_is_written_in_pieces_while_answers_are_read(allow_loopback, receiver: Receiver) -> None:
    body = b'{"data":"' + b"x" * 3_000_000 + b'"}'  # more than a socket buffer holds
    assert sender.send(message(receiver.url(), attempt=1)).success
    result = multiplexed(message(receiver.url(), body=body, attempt=2))
    assert result is not None and result.success
    assert receiver.wait_for(2)[1].body == body


def test_a_long_answer_is_capped_and_its_connection_closed(allow_loopback) -> None:
    peer = Receiver(lambda request: Reply(body=b"x" * (1_000_000 if request.body == b"big" else 10))).start()
    try:
        assert sender.send(message(peer.url())).success
        result = multiplexed(message(peer.url(), body=b"big"))
    finally:
        peer.stop()
    assert result is not None and (result.success, result.response_body) == (True, "x" * 4096)
    assert sender.pool().idle_count() == 0  # the rest of the answer was never read: the connection is done


def after_one_answer(handler: Callable[[socket.socket], None]) -> Callable[[socket.socket], None]:
    """A raw peer's handler: answers the first request OK (the connection the next send reuses), then
    ``handler`` takes the connection."""

    def answer(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(OK)
        handler(conn)

    return answer


def stall(conn: socket.socket) -> None:
    read_request(conn)
    time.sleep(2.5)


def test_a_peer_slower_than_the_timeout_is_a_timeout(allow_loopback, settings) -> None:
    settings.WEBHOOK_TIMEOUT = 1
    port, thread = serve_raw(after_one_answer(stall))
    assert sender.send(message(f"http://127.0.0.1:{port}/hook")).success
    result = multiplexed(message(f"http://127.0.0.1:{port}/hook"))
    thread.join(timeout=5)

    assert outcome(result) == (None, "timeout", "")
    assert 900 <= result.duration_ms < 2500
    assert sender.pool().idle_count() == 0


def test_a_peer_trickling_its_answer_is_cut_off_at_the_timeout(allow_loopback, settings) -> None:
    settings.WEBHOOK_TIMEOUT = 1

    port, thread = serve_raw(after_one_answer(trickle))
    assert sender.send(message(f"http://127.0.0.1:{port}/hook")).success
    result = multiplexed(message(f"http://127.0.0.1:{port}/hook"))
    thread.join(timeout=15)

    assert outcome(result) == (None, "timeout", "")
    assert 900 <= result.duration_ms < 1600


def test_one_thread_has_many_sends_in_flight_at_once(allow_loopback) -> None:
    peer = SlowPeer(delay=0.5)
    try:
        # Six connections opened at once on the blocking path, so six are idle in the pool.
        openers = [threading.Thread(target=sender.send, args=(message(peer.receiver.url()),)) for _ in range(6)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        assert sender.pool().idle_count() == 6
        peer.most_in_flight = 0

        exchanges = sender.Exchanges()
        for n in range(6):
            assert exchanges.start(n, message(peer.receiver.url(), body=b"%d" % n))
        results: dict[object, Result] = {}
        deadline = time.monotonic() + 20
        while len(results) < 6 and time.monotonic() < deadline:
            results.update(exchanges.wait(1.0))
        exchanges.close()
    finally:
        peer.stop()

    assert {n: (r.success, r.response_body) for n, r in results.items()} == {n: (True, "ok") for n in range(6)}
    assert sorted(r.body for r in peer.receiver.requests[6:]) == [b"%d" % n for n in range(6)]
    assert peer.most_in_flight == 6


def test_wake_ends_a_wait_from_another_thread() -> None:
    exchanges = sender.Exchanges()
    threading.Timer(0.2, exchanges.wake).start()
    began = time.monotonic()
    assert exchanges.wait(30.0) == []
    exchanges.close()
    assert time.monotonic() - began < 10


@pytest.fixture
def trusted_tls_receiver(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """The receiver behind TLS, its self-signed certificate trusted by the sender for this test."""
    # Several TLS records for a body of "many", one for the others.
    server = Receiver(lambda request: Reply(body=b"x" * (100_000 if request.body == b"many" else 4000)))
    trusting = ssl.create_default_context(cafile=str(behind_tls(server, tmp_path)))
    monkeypatch.setattr(sender, "tls_context", lambda: trusting)
    server.start()
    yield server
    server.stop()


def test_it_sends_over_an_open_tls_connection(allow_loopback, trusted_tls_receiver: Receiver) -> None:
    url = f"https://127.0.0.1:{trusted_tls_receiver.port}/hook"
    assert sender.send(message(url, attempt=1)).success
    whole = multiplexed(message(url, attempt=2))
    capped = multiplexed(message(url, body=b"many", attempt=3))

    assert whole is not None and (whole.success, whole.response_body) == (True, "x" * 4000)
    assert capped is not None and (capped.success, capped.response_body) == (True, "x" * 4096)
    first, second, _ = trusted_tls_receiver.wait_for(3)
    assert second.client_port == first.client_port
    assert lower(second.headers)["x-webhook-attempt"] == "2"


@pytest.mark.django_db
def test_a_drain_sends_on_open_connections_in_its_own_thread(
    settings, allow_loopback, receiver: Receiver, subscribe: Callable[..., Subscription], monkeypatch
) -> None:
    settings.WEBHOOK_SEND_CONCURRENCY = 4
    threaded: list[str] = []
    blocking_send = sender.send

    def counted(msg: sender.Message) -> Result:  # counts, and sends as ever
        threaded.append(msg.msg_id)
        return blocking_send(msg)

    monkeypatch.setattr(sender, "send", counted)
    subscribe(receiver.url())
    events = [publish("order.created", {"n": n}) for n in range(40)]

    assert worker.drain() == 40

    assert set(Delivery.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert sorted(lower(r.headers)["webhook-id"] for r in receiver.requests) == sorted(e.id for e in events)
    # Only sends that found no idle connection went to a thread: typically the first four (the fresh
    # slots), a few more when a send slow enough to leave its slot (a pause of this machine) made room for
    # a fifth. Every connection the receiver saw was opened by one of them.
    assert 1 <= len(threaded) <= 20
    assert len({r.client_port for r in receiver.requests}) <= len(threaded)
