"""The one place that talks HTTP to subscribers: keep-alive pool, deadline, address guard, headers, response cap.

It speaks just the HTTP/1.1 a webhook POST needs, on plain sockets: one write per request, and of the
answer only its status line, its framing (Content-Length, chunked or close) and its Content-Encoding.
CPU per signed 1 KiB POST to a local sink, one thread: requests about 700 µs, ``http.client``
262 µs (both on the Intel box of the first benchmarks); on the AMD box of the latest, ``http.client``
104-114 µs and this 43-47 µs. ``http.client`` built each request header by header, wrote head and body
separately, and parsed every answer's headers with the ``email`` package: a quarter of a worker's CPU
in the drain benchmark. A sender needs none of
what the extra layers add: it never follows redirects, never retries, never keeps cookies. What it does
need is here: a guarded connect, a total deadline, a capped body excerpt.
"""

import functools
import http.client
import json
import os
import re
import select
import selectors
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
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
READ_SIZE = 65536
MAX_HEAD = 65536  # bytes of status line and headers, as http.client allows per line
MAX_LINE = 1024  # a chunk-size line
HEAD_END = re.compile(rb"\r?\n\r?\n")
UNSAFE_IN_HEADER = re.compile("[\r\n\x00]")
UNSAFE_IN_PATH = re.compile("[\x00-\x20\x7f]")


class BlockedAddressError(ConnectionError):
    """The host resolved to, or connected to, an address that is not public."""


class NameResolutionError(ConnectionError):
    """The host name did not resolve; the ``socket.gaierror`` is the cause."""


def private_networks_allowed() -> bool:
    return settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS


def guarded_connection(address: tuple[str, int], timeout: float | None, source_address=None) -> socket.socket:
    """Resolve once, refuse non-public answers, connect to the address that was checked, check the peer.

    Checking at connect time (not only at registration) defeats DNS rebinding (docs/architecture.md). The
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

    @functools.cached_property
    def request_line(self) -> str:
        """The request line and Host header, as http.client wrote them (the port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != (443 if self.scheme == "https" else 80):
            host = f"{host}:{self.port}"
        return f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\n"


@functools.lru_cache(maxsize=4096)
def target_of(url: str) -> Target:
    """Where a subscription URL points; non-ASCII in the path is percent-encoded, in the host IDNA-encoded."""
    parts = urlsplit(requote_uri(url))
    host = parts.hostname or ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if UNSAFE_IN_PATH.search(path) or UNSAFE_IN_PATH.search(host):
        raise ValueError("control characters or spaces in the URL")
    return Target(parts.scheme, host, port, path)


class Connection:
    """One keep-alive connection to a target: guarded connect, TLS, one request and answer at a time."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        sock = guarded_connection((self.target.host, self.target.port), self.timeout)
        self.sock = sock  # the watchdog can shut it during a TLS handshake too
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.target.scheme == "https":
                self.sock = tls_context().wrap_socket(sock, server_hostname=self.target.host)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def exchange(self, request: bytes, deadline: float) -> tuple[int, str, bool]:
        """Send ``request``; the answer's status, its body excerpt, and whether the connection may carry
        another request (the answer read to its end, and no "close")."""
        if self.sock is None:
            self.connect()
        sock = self.sock
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        answer = Answer()
        while True:
            try:
                if time.monotonic() >= deadline:
                    raise TimeoutError("the attempt's deadline passed")
                sock.settimeout(_left(deadline))
                data = sock.recv(READ_SIZE)
            except EXCHANGE_ERRORS:
                if answer.status is None:
                    raise
                answer.broke_off()
                break
            if answer.feed(data):
                break
        return answer.status, answer.excerpt, answer.reusable


class ConnectionPool:
    """Idle keep-alive connections by (scheme, host, port): a few per host, for the most recent hosts."""

    def __init__(self) -> None:
        self._idle: OrderedDict[tuple[str, str, int], list[Connection]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, target: Target, timeout: float) -> tuple[Connection, bool]:
        """A connection to ``target`` and whether it is reused."""
        conn = self.take_idle(target)
        if conn is None:
            return Connection(target, timeout), False
        conn.timeout = timeout
        return conn, True

    def take_idle(self, target: Target) -> Connection | None:
        """An open idle connection to ``target``, if there is one; one the peer has closed is dropped."""
        while True:
            with self._lock:
                idle = self._idle.get(target.key)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            if conn.sock is not None and not _dropped(conn.sock):
                return conn
            conn.close()

    def give_back(self, target: Target, conn: Connection) -> None:
        evicted: list[Connection] = []
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
        self._watched: dict[int, tuple[float, Connection]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="send-watchdog", daemon=True).start()

    @contextmanager
    def watch(self, conn: Connection, deadline: float) -> Iterator[None]:
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
    """One attempt, blocking this thread: connect if need be, send, read the answer."""
    started_at = timezone.now()
    start = time.monotonic()
    # Connect, send and read together (docs/api.md): one deadline for the whole attempt.
    status_code, error, excerpt = _post(message, start + settings.WEBHOOK_TIMEOUT)
    duration_ms = int((time.monotonic() - start) * 1000)
    return Result(started_at, duration_ms, status_code, error, excerpt)


def _error_of(status: int) -> str | None:
    return None if 200 <= status < 300 else f"HTTP {status}"


# What a failed exchange can raise: socket and TLS errors are OSErrors; a malformed answer is an HTTPException.
EXCHANGE_ERRORS = (OSError, http.client.HTTPException, ValueError)


def _post(message: Message, deadline: float) -> tuple[int | None, str | None, str]:
    state = _per_process()
    try:
        target = target_of(message.url)
    except ValueError:  # a port out of range (URLField lets some through), or control characters
        return None, "connection error: invalid URL", ""
    conn, _reused = state.pool.take(target, _left(deadline))
    try:
        with state.watchdog.watch(conn, deadline):
            status, excerpt, reusable = conn.exchange(request_for(message, target, int(time.time())), deadline)
    except EXCHANGE_ERRORS as exc:
        conn.close()
        return None, describe_error(exc, timed_out=time.monotonic() >= deadline), ""
    if reusable:
        state.pool.give_back(target, conn)
    else:  # body not read to the end, or the peer said close: this connection carries nothing more
        conn.close()
    return status, _error_of(status), excerpt


class Exchanges:
    """Sends on open keep-alive connections, many at once in the calling thread (a drain's), on one selector.

    A send thread cost every send two hand-offs between threads, each a wake-up and a wait for the GIL:
    in process, a drain with one send thread took 242 µs of CPU a delivery where the same sends one after
    another took 181. Here a send is written, and its answer read when its socket is readable,
    by the thread that claims and records. Only sends on a connection already open come here: opening one
    (name lookup, address guard, connect, TLS handshake) blocks, so those sends stay on send threads,
    which leave their connection in the pool for the next. A send thread that finishes calls ``wake`` to
    end a ``wait`` early.
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._bell, self._ringer = socket.socketpair()
        self._bell.setblocking(False)
        self._ringer.setblocking(False)
        self.selector.register(self._bell, selectors.EVENT_READ, None)
        self.flights: set[_Flight] = set()
        self.ended: list[tuple[object, Result]] = []
        self.timeout = settings.WEBHOOK_TIMEOUT  # once: each read of a setting is a lookup through a proxy

    def start(self, key: object, message: Message) -> bool:
        """Send ``message`` if an open connection to its host is idle; ``wait`` returns ``key`` with the
        result. False if not started: the caller sends it on a thread."""
        pool = _per_process().pool
        try:
            target = target_of(message.url)
        except ValueError:  # the blocking path reports it
            return False
        conn = pool.take_idle(target)
        if conn is None:
            return False
        try:
            request = request_for(message, target, int(time.time()))
        except ValueError:  # a header with a line break: the blocking path reports it
            pool.give_back(target, conn)
            return False
        start = time.monotonic()
        # datetime's own now, not timezone.now(), which reads settings.USE_TZ (always on here) every call.
        flight = _Flight(key, conn, target, memoryview(request), datetime.now(UTC), start, self.timeout)
        self.flights.add(flight)
        try:
            conn.sock.setblocking(False)
            self._write(flight)
        except EXCHANGE_ERRORS as exc:
            self._end(flight, exc)
            return True
        self.selector.register(conn.sock, _events(flight), flight)
        return True

    def wake(self) -> None:
        """From any thread: end the current or next ``wait`` now."""
        with suppress(OSError):  # BlockingIOError: a ring is already waiting to be heard
            self._ringer.send(b"\0")

    def wait(self, timeout: float) -> list[tuple[object, Result]]:
        """Up to ``timeout`` seconds for sends to end (or for ``wake``); the (key, result) of those that did."""
        if self.ended:
            timeout = 0
        elif self.flights:
            timeout = min(timeout, min(flight.deadline for flight in self.flights) - time.monotonic())
        for ready, _events in self.selector.select(max(0.0, timeout)):
            if ready.data is None:
                with suppress(OSError):
                    self._bell.recv(4096)
            else:
                self._progress(ready.data)
        now = time.monotonic()
        for flight in [flight for flight in self.flights if flight.deadline <= now]:
            self._end(flight, TimeoutError("the attempt's deadline passed"))
        ended, self.ended = self.ended, []
        return ended

    def close(self) -> None:
        """Close the selector, and any connection still in flight (its row's lease brings it back)."""
        for flight in list(self.flights):
            self.flights.discard(flight)
            flight.conn.close()
        self.selector.close()
        self._bell.close()
        self._ringer.close()

    def _progress(self, flight: "_Flight") -> None:
        """Write what is left of the request, read what has come of the answer; whichever is ready."""
        sock = flight.conn.sock
        flight.read_wants_write = False
        try:
            if flight.out:
                self._write(flight)
            while True:  # a TLS socket may hold decrypted bytes the selector cannot see
                data = sock.recv(READ_SIZE)
                if flight.answer.feed(data):
                    self._end(flight)
                    return
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except ssl.SSLWantWriteError:  # TLS must send before it can read on (a key update, say)
            flight.read_wants_write = True
        except EXCHANGE_ERRORS as exc:
            self._end(flight, exc)
            return
        self.selector.modify(sock, _events(flight), flight)

    @staticmethod
    def _write(flight: "_Flight") -> None:
        try:
            written = flight.conn.sock.send(flight.out)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        flight.out = flight.out[written:]

    def _end(self, flight: "_Flight", exc: BaseException | None = None) -> None:
        """Finish an exchange: its result to ``ended``, its connection back to the pool or closed."""
        self.flights.discard(flight)
        conn, answer = flight.conn, flight.answer
        with suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        if exc is not None and answer.status is not None:
            answer.broke_off()  # after the head: the status stands, the excerpt is what came
            exc = None
        if exc is not None:
            error = describe_error(exc, timed_out=time.monotonic() >= flight.deadline)
            status, excerpt = None, ""
        else:
            status, error, excerpt = answer.status, _error_of(answer.status), answer.excerpt
        if exc is None and answer.reusable and not flight.out:
            _per_process().pool.give_back(flight.target, conn)
        else:
            conn.close()
        duration_ms = int((time.monotonic() - flight.start) * 1000)
        self.ended.append((flight.key, Result(flight.started_at, duration_ms, status, error, excerpt)))


class _Flight:
    """One send in progress on an ``Exchanges`` selector."""

    __slots__ = ("key", "conn", "target", "out", "started_at", "start", "deadline", "answer", "read_wants_write")

    def __init__(
        self,
        key: object,
        conn: Connection,
        target: Target,
        out: memoryview,
        started_at: datetime,
        start: float,
        timeout: float,
    ) -> None:
        self.key, self.conn, self.target, self.out = key, conn, target, out
        self.started_at, self.start, self.deadline = started_at, start, start + timeout
        self.answer = Answer()
        self.read_wants_write = False


def _events(flight: _Flight) -> int:
    """Readable, always; writable too while the request is not all written or TLS wants to write."""
    writing = flight.out or flight.read_wants_write
    return selectors.EVENT_READ | selectors.EVENT_WRITE if writing else selectors.EVENT_READ


def request_for(message: Message, target: Target, timestamp: int) -> bytes:
    """The whole request, head and body, for one write."""
    headers = headers_for(message, timestamp)
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers) or "\x00" in fields:
        raise ValueError("a header value holds a line break or NUL")
    head = f"{target.request_line}Content-Length: {len(message.body)}\r\nAccept-Encoding: identity\r\n{fields}\r\n"
    return head.encode("latin-1") + message.body


def _left(deadline: float) -> float:
    """Seconds to the deadline, never zero: a zero socket timeout would mean non-blocking."""
    return max(0.001, deadline - time.monotonic())


class Answer:
    """An HTTP/1.1 answer parsed from its bytes as they arrive: the status, the framing, and up to 4 KiB of the
    body. ``feed`` it what each read returned (``b""`` at the end of the stream) until it returns True.

    It does no I/O of its own, so a send thread blocking on its socket and a drain multiplexing many sockets
    (``Exchanges``) read answers the same way. The status line decides the outcome (docs/api.md):
    a body that breaks off or fails to decompress after a 2xx is only a lost excerpt, not a failed attempt.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.status: int | None = None  # the final status, once its head is read
        self.will_close = False
        self.complete = False  # the body was read to its end
        self.done = False
        self.chunked = False
        self.length: int | None = None  # of the body; None with chunks, or up to the close
        self.decoder = None
        self.data = b""  # the body excerpt, decoded
        self.taken = 0  # body bytes read, still encoded
        self.chunk_left: int | None = None  # chunked: bytes left of the current chunk; None before its size line
        self.trailer = False  # chunked: past the last chunk, reading trailer fields up to the blank line

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: the answer read to its end, nothing after it,
        and no "close"."""
        return self.complete and not self.will_close and not self.buffer

    @property
    def excerpt(self) -> str:
        # PostgreSQL text cannot hold NUL.
        return self.data[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")

    def feed(self, data: bytes) -> bool:
        """Take the next bytes read; True once the answer is read as far as it will be. Raises (an
        ``http.client.HTTPException``) for an answer that breaks off or is not HTTP before its status."""
        self.buffer += data
        end = not data
        if self.status is None and not self._read_head(end):
            return False
        try:
            self.done = self._read_body(end)
        except (http.client.HTTPException, ValueError, zlib.error):
            self.done, self.complete = True, False
        return self.done

    def broke_off(self) -> None:
        """Reading failed after the head (a reset, the deadline): the status stands, the excerpt is what came."""
        self.done, self.complete = True, False

    def _read_head(self, end: bool) -> bool:
        while self.status is None:
            found = HEAD_END.search(self.buffer)
            if found:
                head, self.buffer = self.buffer[: found.start()], self.buffer[found.end() :]
            elif len(self.buffer) > MAX_HEAD:
                raise http.client.LineTooLong("header section")
            elif not end:
                return False
            elif b"\n" in self.buffer:  # the peer closed after the headers, without the blank line
                head, self.buffer = self.buffer, b""
            else:
                raise http.client.RemoteDisconnected("closed before a complete answer")
            status, version, fields = _parse_head(head)
            if not (100 <= status < 200 and status != 101):  # 100 Continue, 103 Early Hints: the final answer follows
                self._frame(status, version, fields)
        return True

    def _frame(self, status: int, version: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        lengths = set()
        connection = b""
        encoding = ""
        for name, value in fields:
            if name == b"content-length":
                lengths.add(value)
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value.lower()
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
        self.will_close = b"close" in connection or (version == b"HTTP/1.0" and b"keep-alive" not in connection)
        if status in (204, 304) or status < 200:
            self.length, self.chunked = 0, False
        elif not self.chunked:
            length = lengths.pop() if len(lengths) == 1 else b""
            if length.isdigit():
                self.length = int(length)
            else:  # no length, or lengths that disagree: the body ends at the close
                self.will_close = True
        self.decoder = _decoder(encoding)
        self.status = status

    def _read_body(self, end: bool) -> bool:
        """Consume what the buffer holds of the body; True when the answer is done."""
        if self.chunked:
            return self._read_chunks(end)
        if self.length is None:  # up to the close
            piece, self.buffer = self.buffer, b""
            return self._keep(piece) or end
        left = self.length - self.taken
        piece, self.buffer = self.buffer[:left], self.buffer[left:]
        self.complete = len(piece) == left
        if self._keep(piece) or self.complete:
            return True
        if end:
            raise http.client.IncompleteRead(b"", left - len(piece))
        return False

    def _read_chunks(self, end: bool) -> bool:
        while True:
            if self.trailer or self.chunk_left is None:  # a size line, or a trailer field up to the blank line
                line = self._line(end)
                if line is None:
                    return False
                if self.trailer:
                    if not line:
                        self.complete = True
                        return True
                    continue
                self.chunk_left = int(line.split(b";", 1)[0].strip(), 16)
                self.trailer = self.chunk_left == 0
                continue
            if self.chunk_left > 0:
                piece, self.buffer = self.buffer[: self.chunk_left], self.buffer[self.chunk_left :]
                self.chunk_left -= len(piece)
                if self._keep(piece):
                    return True
                if self.chunk_left:
                    if end:
                        raise http.client.IncompleteRead(b"", self.chunk_left)
                    return False
            line = self._line(end)  # the line end after the chunk's data
            if line is None:
                return False
            if line:
                raise http.client.IncompleteRead(b"")
            self.chunk_left = None

    def _line(self, end: bool) -> bytes | None:
        """The next line, without its line end; None until it has arrived."""
        found = self.buffer.find(b"\n")
        if found >= 0:
            line, self.buffer = self.buffer[:found], self.buffer[found + 1 :]
            return line.rstrip(b"\r")
        if len(self.buffer) > MAX_LINE:
            raise http.client.LineTooLong("chunk size")
        if end:
            raise http.client.IncompleteRead(b"")
        return None

    def _keep(self, piece: bytes) -> bool:
        """Add a piece of the body to the excerpt; True once the excerpt is full (the rest is not read)."""
        if not piece:
            return False
        self.taken += len(piece)
        decoder = self.decoder
        self.data += decoder.decompress(piece, MAX_RESPONSE_BYTES - len(self.data)) if decoder else piece
        return len(self.data) >= MAX_RESPONSE_BYTES or self.taken >= MAX_COMPRESSED_BYTES


def _parse_head(head: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The status, the HTTP version and the (lowercased name, value) fields of a status line and headers."""
    lines = head.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/") or not code.isdigit() or len(code) != 3 or rest[3:4] not in (b"", b" "):
        raise http.client.BadStatusLine(repr(status_line))
    status = int(code)
    if status < 100:
        raise http.client.BadStatusLine(repr(status_line))
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            fields.append((name.strip().lower(), value.strip()))
    return status, version, fields


def _decoder(encoding: str):
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib-wrapped, as nearly every server sends it
    return None


def describe_error(exc: BaseException, timed_out: bool = False) -> str:
    """The short forms of docs/api.md: timeout, connection refused, dns: ..., blocked: ...

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


@functools.lru_cache(maxsize=4096)
def safe_url(url: str) -> str:
    """Scheme, host and path only: a query string may hold a token (docs/api.md).

    Never raises: it runs in logging and alert paths, and URLField accepts ports urlsplit rejects (``:99999``).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
