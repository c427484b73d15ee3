"""A real local HTTP receiver that records what it gets, for tests and benchmarks."""

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float
    client_port: int = 0


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """Answers with ``reply(request)`` (200 "ok" by default) and keeps every request it got."""

    def __init__(
        self, reply: Callable[[Received], Reply] | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.reply = reply or (lambda request: Reply())
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.host = host
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.requests)} requests, expected {count}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                request = Received(self.path, dict(self.headers.items()), body, time.time(), self.client_address[1])
                with receiver.lock:
                    receiver.requests.append(request)
                reply = receiver.reply(request)
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def describe(request: Received, method: str = "POST") -> str:
    """The request as a person reads it: request line, headers, a blank line, the body."""
    headers = "".join(f"{name}: {value}\n" for name, value in request.headers.items())
    return f"{method} {request.path}\n{headers}\n{request.body.decode(errors='replace')}\n"


def main() -> None:
    """``python -m tests.receiver --port 9000``: print every request that arrives, in full, and answer 200 "ok"."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()

    def show(request: Received) -> Reply:
        # Flushed at once: the output is often a pipe (a test, tee), where Python would hold it back.
        print(describe(request), flush=True)
        return Reply()

    receiver = Receiver(show, host=arguments.host, port=arguments.port)
    print(f"listening on {receiver.url('/')}", flush=True)
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        receiver.server.server_close()


if __name__ == "__main__":
    main()
