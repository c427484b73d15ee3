"""The one place that talks HTTP to subscribers: keep-alive pool, deadline, address guard, headers, response cap.

It speaks HTTP/1.1 through the standard library's ``http.client``. requests (and urllib3 under it) cost
about 700 µs of CPU per POST here, ``http.client`` about 150 µs (bench/results, issue 6), and a sender
needs none of what the extra layers add: it never follows redirects, never retries, never keeps cookies.
What it does need is here: a guarded connect, a total deadline, a capped body excerpt.
"""

import functools
import http.client
import json
import os
import select
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import certifi
from django.conf import settings
from django.utils import timezone
from requests.utils import requote_uri

from subscriptions import signing
from subscriptions.addresses import is_public_address

MAX_RESPONSE_BYTES = 4096
# Compressed bytes read at most to fill the excerpt: a body that inflates to little stops here.
MAX_COMPRESSED_BYTES = 16 * MAX_RESPONSE_BYTES
USER_AGENT = "Hookrelay/0.1"
TIMEOUT = "timeout"  # the error of an attempt that ran out of WEBHOOK_TIMEOUT
IDLE_PER_HOST = 16
IDLE_HOSTS = 256
WATCHDOG_INTERVAL = 0.1


class BlockedAddressError(ConnectionError):
    """The host resolved to, or connected to, an address that is not public."""


class NameResolutionError(ConnectionError):
    """The host name did not resolve; the ``socket.gaierror`` is the cause."""


def private_networks_allowed() -> bool:
    return settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS


def guarded_connection(address: tuple[str, int], timeout: float | None, source_address=None) -> socket.socket:
    """Resolve once, refuse non-public answers, connect to the address that was checked, check the peer.

    Checking at connect time (not only at registration) defeats DNS rebinding (DESIGN.md section 5). The
    connection keeps the host name, so Host, SNI and certificate checks use it.
    """
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NameResolutionError(host) from exc
    addresses = [info[4][0] for info in infos]
    guarded = not private_networks_allowed()
    if guarded and not all(is_public_address(a) for a in addresses):
        raise BlockedAddressError(f"{host} resolves to a non-public address")
    error: OSError | None = None
    for checked in addresses:
        try:
            sock = socket.create_connection((checked, port), timeout)
        except OSError as exc:
            error = exc
            continue
        if guarded and not is_public_address(sock.getpeername()[0]):
            sock.close()
            raise BlockedAddressError("connected to a non-public address")
        return sock
    raise error or OSError(f"no address for {host}")


class GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._create_connection = guarded_connection


class GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=tls_context())
        self._create_connection = guarded_connection


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Certificates and host names verified against certifi's bundle, as requests does."""
    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def key(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@functools.lru_cache(maxsize=4096)
def target_of(url: str) -> Target:
    """Where a subscription URL points; non-ASCII in the path is percent-encoded, in the host IDNA-encoded."""
    parts = urlsplit(requote_uri(url))
    host = parts.hostname or ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path)


class ConnectionPool:
    """Idle keep-alive connections by (scheme, host, port): a few per host, for the most recent hosts."""

    def __init__(self) -> None:
        self._idle: OrderedDict[tuple[str, str, int], list[http.client.HTTPConnection]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, target: Target, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to ``target`` and whether it is reused; one the peer has closed is dropped."""
        while True:
            with self._lock:
                idle = self._idle.get(target.key)
                conn = idle.pop() if idle else None
            if conn is None:
                cls = GuardedHTTPSConnection if target.scheme == "https" else GuardedHTTPConnection
                return cls(target.host, target.port, timeout), False
            if conn.sock is not None and not _dropped(conn.sock):
                return conn, True
            conn.close()

    def give_back(self, target: Target, conn: http.client.HTTPConnection) -> None:
        evicted: list[http.client.HTTPConnection] = []
        with self._lock:
            idle = self._idle.setdefault(target.key, [])
            self._idle.move_to_end(target.key)
            if len(idle) < IDLE_PER_HOST:
                idle.append(conn)
            else:
                evicted.append(conn)
            while len(self._idle) > IDLE_HOSTS:
                evicted += self._idle.popitem(last=False)[1]
        for old in evicted:
            old.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, OrderedDict()
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(conns) for conns in self._idle.values())


def _dropped(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the peer (or sent junk): never reuse it."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Watchdog:
    """Shuts down the socket of a send that outlives its deadline.

    Socket timeouts bound each read; a peer trickling one byte at a time could stretch a send far past
    ``WEBHOOK_TIMEOUT`` without the watchdog.
    """

    def __init__(self) -> None:
        self._watched: dict[int, tuple[float, http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="send-watchdog", daemon=True).start()

    @contextmanager
    def watch(self, conn: http.client.HTTPConnection, deadline: float) -> Iterator[None]:
        with self._lock:
            self._watched[id(conn)] = (deadline, conn)
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(id(conn), None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCHDOG_INTERVAL)
            now = time.monotonic()
            with self._lock:
                overdue = [conn for deadline, conn in self._watched.values() if deadline < now]
            for conn in overdue:
                sock = conn.sock
                if sock is not None:
                    with suppress(OSError):  # already closed: the send ended on its own
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _PerProcess:
    """The pool and the watchdog, made after fork: a child never shares its parent's sockets or threads."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pool = ConnectionPool()
        self.watchdog = Watchdog()


_state: _PerProcess | None = None
_state_lock = threading.Lock()


def _per_process() -> _PerProcess:
    global _state
    state = _state
    if state is None or state.pid != os.getpid():
        with _state_lock:
            if _state is None or _state.pid != os.getpid():
                _state = _PerProcess()
            state = _state
    return state


def pool() -> ConnectionPool:
    return _per_process().pool


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
    # Connect, send and read together (CONTRACT.md section 1): one deadline for the whole attempt.
    status_code, error, excerpt = _post(message, start + settings.WEBHOOK_TIMEOUT)
    duration_ms = int((time.monotonic() - start) * 1000)
    return Result(started_at, duration_ms, status_code, error, excerpt)


# What a failed exchange can raise: socket and TLS errors are OSErrors; a malformed answer is an HTTPException.
EXCHANGE_ERRORS = (OSError, http.client.HTTPException, ValueError)


def _post(message: Message, deadline: float) -> tuple[int | None, str | None, str]:
    state = _per_process()
    try:
        target = target_of(message.url)
    except ValueError:  # a port out of range: URLField lets some through
        return None, "connection error: invalid URL", ""
    headers = headers_for(message, int(time.time()))
    conn, _reused = state.pool.take(target, _left(deadline))
    try:
        with state.watchdog.watch(conn, deadline):
            conn.timeout = _left(deadline)
            if conn.sock is not None:
                conn.sock.settimeout(_left(deadline))
            conn.request("POST", target.path, body=message.body, headers=headers)
            conn.sock.settimeout(_left(deadline))
            response = conn.getresponse()
            excerpt = _read_capped(conn, response, deadline)
    except EXCHANGE_ERRORS as exc:
        conn.close()
        return None, describe_error(exc, timed_out=time.monotonic() >= deadline), ""
    if response.length == 0:  # read to the end: http.client only notices on the next read
        response.close()
    if response.isclosed() and not response.will_close:
        state.pool.give_back(target, conn)
    else:  # body not read to the end, or the peer said close: this connection carries nothing more
        conn.close()
    status = response.status
    return status, None if 200 <= status < 300 else f"HTTP {status}", excerpt


def _left(deadline: float) -> float:
    """Seconds to the deadline, never zero: a zero socket timeout would mean non-blocking."""
    return max(0.001, deadline - time.monotonic())


def _read_capped(conn: http.client.HTTPConnection, response: http.client.HTTPResponse, deadline: float) -> str:
    """Up to 4 KiB of the body (decompressed), read only until the attempt's deadline.

    The status line decides the outcome (CONTRACT.md section 4): a body that breaks off or fails to
    decompress after a 2xx is only a lost excerpt, not a failed attempt.
    """
    data = b""
    decoder = _decoder(response.getheader("Content-Encoding", ""))
    taken = 0
    try:
        while len(data) < MAX_RESPONSE_BYTES and taken < MAX_COMPRESSED_BYTES and time.monotonic() < deadline:
            conn.sock.settimeout(_left(deadline))
            chunk = response.read1(MAX_RESPONSE_BYTES)
            if not chunk:
                break
            taken += len(chunk)
            data += decoder.decompress(chunk, MAX_RESPONSE_BYTES - len(data)) if decoder else chunk
    except (*EXCHANGE_ERRORS, zlib.error):
        pass
    # PostgreSQL text cannot hold NUL.
    return data[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def _decoder(encoding: str):
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib-wrapped, as nearly every server sends it
    return None


def describe_error(exc: BaseException, timed_out: bool = False) -> str:
    """The short forms of CONTRACT.md section 3: timeout, connection refused, dns: ..., blocked: ...

    ``timed_out``: the attempt's deadline had passed when it failed, so the watchdog (or a socket
    timeout) ended it.
    """
    if isinstance(exc, BlockedAddressError):
        return "blocked: private address"
    if isinstance(exc, NameResolutionError):
        cause = exc.__cause__
        reason = cause.strerror if isinstance(cause, socket.gaierror) else None
        return f"dns: {reason or 'not resolved'}"
    if timed_out or isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls error"
    if isinstance(exc, ConnectionError | http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "connection reset"
    return f"connection error: {type(exc).__name__}"


def safe_url(url: str) -> str:
    """Scheme, host and path only: a query string may hold a token (CONTRACT.md section 4).

    Never raises: it runs in logging and alert paths, and URLField accepts ports urlsplit rejects (``:99999``).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
