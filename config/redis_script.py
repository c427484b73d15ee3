"""Lua scripts run over a Redis connection of their own: one write and one read per call."""

import hashlib
import os
import threading
from collections.abc import Sequence

import redis
from redis import exceptions


class Script:
    """A script called on the hot paths (the wake-up ring of every publish, the rate limit of every API
    request).

    redis-py's ``register_script`` takes a connection from the pool, runs its retry wrapper and packs the
    command again on every call: a quarter of ``publish()``'s CPU. This keeps one connection
    (shared by the process's threads under a lock), writes EVALSHA and reads the reply. A script Redis has
    forgotten (a restart, ``SCRIPT FLUSH``) is loaded and the call sent again; a broken connection is
    reopened once, then the error is the caller's.
    """

    def __init__(self, url: str, source: str, timeout: float) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, single_connection_client=True
        )
        self.connection = self.client.connection
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def pack(self, keys: Sequence[str], args: Sequence[object]) -> list[bytes]:
        """The call, packed: pass it to ``run`` when the same keys and arguments are used every time."""
        return self.connection.pack_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def __call__(self, keys: Sequence[str], args: Sequence[object]) -> object:
        return self.run(self.pack(keys, args))

    def run(self, packed: list[bytes]) -> object:
        if self.pid != os.getpid():  # made before a fork: the parent's socket is not this process's
            self.pid, self.lock = os.getpid(), threading.Lock()
            self.connection.disconnect()
        with self.lock:
            try:
                return self._send(packed)
            except exceptions.NoScriptError:
                self.client.script_load(self.source)
            except (exceptions.ConnectionError, exceptions.TimeoutError):
                self.connection.disconnect()
            return self._send(packed)

    def _send(self, packed: list[bytes]) -> object:
        self.connection.send_packed_command(packed, check_health=False)
        return self.connection.read_response()
