"""HTTP load generator for the ingest scenario: ``POST /api/v1/events/`` over keep-alive connections.

``python -m bench.loadgen --port P --token T [--connections 8] [--duration 10] [--max-requests N]``

Raw HTTP/1.1 over asyncio streams in one process (cheaper per request than a thread per connection, so the
generator takes as little CPU as possible from the server it measures). A connection is reused until the
server closes it (gunicorn's sync workers close after every response), then reopened. Bounded by time and
by count. Prints one JSON line: requests, statuses, requests per second and latency percentiles over the
measured window (after ``--warmup`` seconds).
"""

import argparse
import asyncio
import json
import time

from bench.publisher import payload


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

    async def connection(self) -> None:
        reader = writer = None
        while self.take():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.args.port)
                    self.connections_opened += 1
                started = time.monotonic()
                writer.write(self.request)
                status, close = await self.response(reader)
                now = time.monotonic()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if started >= self.measure_from:
                self.measured_statuses[status] = self.measured_statuses.get(status, 0) + 1
                self.latencies.append(now - started)
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    @staticmethod
    async def response(reader: asyncio.StreamReader) -> tuple[int, bool]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        lines = head.decode("latin-1").split("\r\n")
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
        if length:
            await reader.readexactly(length)
        return status, close

    async def run(self) -> dict:
        self.start = time.monotonic()
        self.measure_from = self.start + self.args.warmup
        self.deadline = self.measure_from + self.args.duration
        await asyncio.gather(*(self.connection() for _ in range(self.args.connections)))
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
    print(json.dumps(asyncio.run(Load(args).run())), flush=True)


if __name__ == "__main__":
    main()
