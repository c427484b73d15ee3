"""The one place that talks HTTP to subscribers: session, timeouts, address guard, headers, response cap."""

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.utils import timezone
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import Timeout
from urllib3.util import connection as urllib3_connection

from subscriptions import signing
from subscriptions.addresses import is_public_address

MAX_RESPONSE_BYTES = 4096
USER_AGENT = "Hookrelay/0.1"


class BlockedAddressError(NewConnectionError):
    """The host resolved to an address that is not public."""


def private_networks_allowed() -> bool:
    return settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS


class GuardedConnectionMixin:
    """Resolve once per connection, refuse non-public answers, connect to the address that was checked.

    Checking at connect time (not only at registration) defeats DNS rebinding (DESIGN.md section 5).
    The hostname stays on the connection, so Host, SNI and certificate checks use it.
    """

    def _new_conn(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        addresses = [info[4][0] for info in infos]
        if not private_networks_allowed() and not all(is_public_address(a) for a in addresses):
            raise BlockedAddressError(self, f"{self.host} resolves to a non-public address")
        return self._connect_first(addresses)

    def _connect_first(self, addresses: list[str]) -> socket.socket:
        error: OSError | None = None
        for address in addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (address, self.port), self.timeout, socket_options=self.socket_options
                )
            except OSError as exc:
                error = exc
                continue
            if not private_networks_allowed() and not is_public_address(sock.getpeername()[0]):
                sock.close()
                raise BlockedAddressError(self, "connected to a non-public address")
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error


class GuardedHTTPConnection(GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(GuardedConnectionMixin, HTTPSConnection):
    pass


class GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


_session: requests.Session | None = None
_session_pid = 0


def session() -> requests.Session:
    """One keep-alive session per process, made after fork."""
    global _session, _session_pid
    if _session is None or _session_pid != os.getpid():
        _session = requests.Session()
        adapter = GuardedAdapter(pool_connections=64, pool_maxsize=settings.WEBHOOK_SEND_CONCURRENCY, max_retries=0)
        _session.mount("http://", adapter)
        _session.mount("https://", adapter)
        _session.trust_env = False
        _session_pid = os.getpid()
    return _session


@dataclass(frozen=True)
class Result:
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_body: str

    @property
    def success(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Message:
    """Everything one attempt needs: built from a delivery, signed at send time."""

    url: str
    msg_id: str
    event_type: str
    body: bytes
    secrets: list[str]
    attempt: int
    correlation_id: str


def encode_body(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def headers_for(message: Message, timestamp: int) -> dict[str, str]:
    signatures = [signing.standard_signature(s, message.msg_id, timestamp, message.body) for s in message.secrets]
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message.msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        "X-Webhook-Id": message.msg_id,
        "X-Webhook-Event": message.event_type,
        "X-Webhook-Signature": signing.legacy_signature(message.secrets[0], message.body),
        "X-Webhook-Attempt": str(message.attempt),
        "X-Correlation-Id": message.correlation_id,
    }


def send(message: Message) -> Result:
    started_at = timezone.now()
    start = time.monotonic()
    status_code, error, excerpt = _post(message)
    duration_ms = int((time.monotonic() - start) * 1000)
    return Result(started_at, duration_ms, status_code, error, excerpt)


def _post(message: Message) -> tuple[int | None, str | None, str]:
    headers = headers_for(message, int(time.time()))
    # Connect and read together (CONTRACT.md section 1): urllib3 spends one budget on both; the body
    # excerpt is then read against the same deadline.
    timeout = Timeout(total=settings.WEBHOOK_TIMEOUT)
    deadline = time.monotonic() + settings.WEBHOOK_TIMEOUT
    try:
        # Straight to the adapter: the Session layer (cookies, hooks, settings merging) cost a third of a
        # send's CPU, and the adapter never follows a redirect.
        request = requests.Request("POST", message.url, headers=headers, data=message.body).prepare()
        with session().get_adapter(message.url).send(request, stream=True, timeout=timeout) as response:
            excerpt = _read_capped(response, deadline)
    except (requests.RequestException, HTTPError) as exc:
        return None, describe_error(exc), ""
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return response.status_code, error, excerpt


def _read_capped(response: requests.Response, deadline: float) -> str:
    """Up to 4 KiB of the body, read only until the attempt's deadline.

    The status line decides the outcome (CONTRACT.md section 4): a body that breaks off or fails to
    decompress after a 2xx is only a lost excerpt, not a failed attempt.
    """
    data = b""
    try:
        while len(data) < MAX_RESPONSE_BYTES and time.monotonic() < deadline:
            chunk = response.raw.read1(MAX_RESPONSE_BYTES - len(data), decode_content=True)
            if not chunk:
                break
            data += chunk
    except HTTPError:
        pass
    # PostgreSQL text cannot hold NUL.
    return data[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def describe_error(exc: BaseException) -> str:
    """The short forms of CONTRACT.md section 3: timeout, connection refused, dns: ..., blocked: ..."""
    reason = _root_reason(exc)
    if isinstance(reason, BlockedAddressError):
        return "blocked: private address"
    if isinstance(reason, NameResolutionError):
        return f"dns: {_gai_reason(reason)}"
    if isinstance(exc, requests.Timeout) or isinstance(reason, ReadTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(reason, NewConnectionError) and isinstance(reason.__cause__, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, SSLError) or isinstance(exc, requests.exceptions.SSLError):
        return "tls error"
    if isinstance(reason, ProtocolError):
        return "connection reset"
    return f"connection error: {type(reason).__name__}"


def _root_reason(exc: BaseException) -> BaseException:
    reason: BaseException = exc
    while True:
        inner = getattr(reason, "reason", None)
        if isinstance(inner, BaseException):
            reason = inner
            continue
        if reason.args and isinstance(reason.args[0], BaseException):
            reason = reason.args[0]
            continue
        return reason


def _gai_reason(error: NameResolutionError) -> str:
    cause = error.__cause__
    return cause.strerror if isinstance(cause, socket.gaierror) and cause.strerror else "name not resolved"


def safe_url(url: str) -> str:
    """Scheme, host and path only: a query string may hold a token (CONTRACT.md section 4).

    Never raises: it runs in logging and alert paths, and URLField accepts ports urlsplit rejects (``:99999``).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
