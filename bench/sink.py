"""A fast HTTP/1.1 keep-alive sink for the benchmarks: answers 200 "ok" and records every arrival.

Run as its own process (``python -m bench.sink``), so it never shares a GIL with what it measures. It is
a raw asyncio protocol (no per-request objects beyond one tuple), a few microseconds per request.

Paths:
- ``/slow/...``: answered only after ``--slow-delay`` seconds (longer than the worker's timeout), so the
  sender gives up first; counted separately.
- ``/__stats`` (GET): ``{"count", "slow", "first", "last"}`` of the recorded arrivals so far.
- ``/__reset`` (POST): forget every arrival.
- ``/__dump?path=FILE`` (POST): write the arrivals as ``arrival<TAB>webhook-id<TAB>kind`` lines to FILE.
- anything else: recorded, answered ``200 ok`` at once.

The control paths are answered on the same port; the harness is the only client that uses them.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
MAX_HEAD = 64 * 1024


class Recorder:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str, str]] = []
        self.slow = 0

    def stats(self) -> dict:
        times = [a[0] for a in self.arrivals]
        return {
            "count": len(self.arrivals) - self.slow,
            "slow": self.slow,
            "first": min(times) if times else None,
            "last": max(times) if times else None,
        }

    def reset(self) -> None:
        self.arrivals = []
        self.slow = 0

    def dump(self, path: str) -> int:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            for arrival, webhook_id, kind in self.arrivals:
                out.write(f"{arrival:.6f}\t{webhook_id}\t{kind}\n")
        os.replace(tmp, path)
        return len(self.arrivals)


def response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nContent-Type: {content_type}\r\n\r\n"
    return head.encode() + body


class SinkProtocol(asyncio.Protocol):
    def __init__(self, recorder: Recorder, slow_delay: float) -> None:
        self.recorder = recorder
        self.slow_delay = slow_delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.body_left: int | None = None
        self.request: tuple[bytes, bytes, str] = (b"", b"", "")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.body_left is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self.transport.close()
                    return
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                self._parse_head(head)
            if len(self.buffer) < self.body_left:
                return
            del self.buffer[: self.body_left]
            self.body_left = None
            self._answer()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, _, rest = lines[0].partition(b" ")
        target = rest.rpartition(b" ")[0]
        length = 0
        webhook_id = ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"webhook-id":
                webhook_id = value.strip().decode("ascii", "replace")
        self.body_left = length
        self.request = (method, target, webhook_id)

    def _answer(self) -> None:
        method, target, webhook_id = self.request
        if target.startswith(b"/__"):
            self.transport.write(self._control(method, target.decode("ascii", "replace")))
            return
        now = time.time()
        if target.startswith(b"/slow"):
            self.recorder.arrivals.append((now, webhook_id, "slow"))
            self.recorder.slow += 1
            asyncio.get_running_loop().call_later(self.slow_delay, self._late_ok)
            return
        self.recorder.arrivals.append((now, webhook_id, "ok"))
        self.transport.write(OK)

    def _late_ok(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(OK)

    def _control(self, method: bytes, target: str) -> bytes:
        parts = urlsplit(target)
        if parts.path == "/__stats":
            return response("200 OK", json.dumps(self.recorder.stats()).encode())
        if parts.path == "/__reset" and method == b"POST":
            self.recorder.reset()
            return response("200 OK", b'{"reset": true}')
        if parts.path == "/__dump" and method == b"POST":
            path = parse_qs(parts.query).get("path", [""])[0]
            if not path:
                return response("400 Bad Request", b'{"detail": "path is required"}')
            count = self.recorder.dump(path)
            return response("200 OK", json.dumps({"written": count}).encode())
        return response("404 Not Found", b'{"detail": "no such control path"}')

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, slow_delay: float, lifetime: float) -> None:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(recorder, slow_delay), host, port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # A sink left behind by a crashed harness still goes away by itself.
        await asyncio.wait_for(stop.wait(), timeout=lifetime)
    except TimeoutError:
        print("sink: lifetime over, exiting", file=sys.stderr, flush=True)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slow-delay", type=float, default=5.0, help="seconds before /slow/... is answered")
    parser.add_argument("--lifetime", type=float, default=3 * 3600, help="exit after this many seconds regardless")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.slow_delay, args.lifetime))


if __name__ == "__main__":
    main()
