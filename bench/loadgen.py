"""HTTP load generator for the ingest scenario: ``POST /api/v1/events/`` over keep-alive connections.

``python -m bench.loadgen --port P --token T [--connections 8] [--duration 10] [--max-requests N]``

Raw HTTP/1.1 on non-blocking sockets and one selector, in one process, the request bytes made once: the
generator shares the machine with the server it measures, so it should take as little CPU as it can
(an asyncio version took about 0.37 ms of CPU a request; gunicorn's sync workers would close the connection
after every answer, so each request also opens one). A connection is reused until the server closes it,
then reopened. Bounded by time and by count. Prints one JSON line: requests, statuses, requests per
second and latency percentiles over the measured window (after ``--warmup`` seconds).
"""

import argparse
import contextlib
import errno
import json
import selectors
import socket
import time

from bench.publisher import payload

ANSWER_TIMEOUT = 30.0


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        body = json.dumps({"type": "bench.ingest", "data": payload(args.payload_bytes, 0)}).encode()
        head = (
            f"POST /api/v1/events/ HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            f"Authorization: Bearer {args.token}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        )
        self.request = head.encode() + body
        self.selector = selectors.DefaultSelector()
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.measured_statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.latencies: list[float] = []
        self.connections_opened = 0
        self.start = 0.0
        self.measure_from = 0.0
        self.deadline = 0.0

    def take(self) -> bool:
        if self.sent >= self.args.max_requests or time.monotonic() >= self.deadline:
            return False
        self.sent += 1
        return True

    def open(self) -> None:
        """A new connection for the next request, if there is one to make."""
        if not self.take():
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(("127.0.0.1", self.args.port))
        if code not in (0, errno.EINPROGRESS):
            self.fail(sock, ConnectionRefusedError.__name__ if code == errno.ECONNREFUSED else f"connect errno {code}")
            return
        self.connections_opened += 1
        self.selector.register(sock, selectors.EVENT_WRITE, Flight(sock, connecting=True))

    def send(self, flight: "Flight") -> None:
        flight.started = time.monotonic()
        flight.buffer = b""
        flight.sock.sendall(self.request)  # about 1.3 KiB: the socket buffer takes it whole
        self.selector.modify(flight.sock, selectors.EVENT_READ, flight)

    def fail(self, sock: socket.socket, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        with contextlib.suppress(KeyError, ValueError):  # not registered yet: the connect failed at once
            self.selector.unregister(sock)
        sock.close()
        time.sleep(0.01)  # a refused or reset connection: do not spin
        self.open()

    def progress(self, flight: "Flight") -> None:
        sock = flight.sock
        try:
            if flight.connecting:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, "connect failed")
                flight.connecting = False
                self.send(flight)
                return
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed before a complete answer")
            flight.buffer += data
            answer = parse(flight.buffer)
        except (OSError, ValueError) as exc:
            self.fail(sock, type(exc).__name__)
            return
        if answer is None:
            return
        status, close = answer
        now = time.monotonic()
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if flight.started >= self.measure_from:
            self.measured_statuses[status] = self.measured_statuses.get(status, 0) + 1
            self.latencies.append(now - flight.started)
        if not close and self.take():
            self.send(flight)
            return
        self.selector.unregister(sock)
        sock.close()
        if close:
            self.open()

    def run(self) -> dict:
        self.start = time.monotonic()
        self.measure_from = self.start + self.args.warmup
        self.deadline = self.measure_from + self.args.duration
        for _ in range(self.args.connections):
            self.open()
        while self.selector.get_map():
            for key, _events in self.selector.select(0.5):
                self.progress(key.data)
            now = time.monotonic()
            for key in list(self.selector.get_map().values()):
                if now - key.data.started > ANSWER_TIMEOUT and key.data.started:
                    self.fail(key.fileobj, TimeoutError.__name__)
        end = time.monotonic()
        measured = sum(self.measured_statuses.values())
        window = end - self.measure_from
        return {
            "requests": sum(self.statuses.values()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "measured_requests": measured,
            "measured_statuses": {str(k): v for k, v in sorted(self.measured_statuses.items())},
            "errors": self.errors,
            "window_s": round(window, 3),
            "requests_per_s": round(measured / window, 1) if window > 0 else None,
            "p50_ms": _ms(percentile(self.latencies, 0.50)),
            "p99_ms": _ms(percentile(self.latencies, 0.99)),
            "connections": self.args.connections,
            "connections_opened": self.connections_opened,
        }


class Flight:
    """One connection and the request on it."""

    __slots__ = ("sock", "connecting", "started", "buffer")

    def __init__(self, sock: socket.socket, connecting: bool) -> None:
        self.sock, self.connecting, self.started, self.buffer = sock, connecting, 0.0, b""


def parse(buffer: bytes) -> tuple[int, bool] | None:
    """The status and whether the server closes, once the whole answer is in ``buffer``; else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
    if len(buffer) - end - 4 < length:
        return None
    return status, close


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds, after the warm-up")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args()
    print(json.dumps(Load(args).run()), flush=True)


if __name__ == "__main__":
    main()
