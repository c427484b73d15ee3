"""The embedded Celery broker: kombu's filesystem transport, with messages that appear whole.

kombu's filesystem ``_put`` creates a message file under its final name and then writes it, and its ``_get``
takes any file of that name: a reader that comes in between reads an empty or partial message, and the
worker stops with ``Unrecoverable error: JSONDecodeError`` (kombu 5.7.0). Here a message is written in a
folder no reader lists and renamed into place, and a reader takes a message by renaming it out of the
folder; ``os.replace`` and ``os.rename`` are atomic within one filesystem, so a message is seen whole or
not at all, and by one reader only. Exchange tables get the same treatment when they are first created.

``_put``/``_get`` are the extension points kombu documents for virtual transports; everything else (routing,
acknowledgements, redelivery) is kombu's.
"""

import os
import time
import uuid
from functools import cached_property
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

SHUTDOWN_CHECK_SECONDS = 0.25


class Channel(filesystem.Channel):
    @cached_property
    def tmp_folder(self) -> str:
        """Messages being written and messages being read; on the data folder's filesystem, so renames stay atomic."""
        folder = self.transport_options.get("tmp_folder") or os.path.join(self.data_folder_in, "tmp")
        os.makedirs(folder, exist_ok=True)
        return folder

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:
        # kombu's name: the creation time first, so _get takes the oldest message first.
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        partial = os.path.join(self.tmp_folder, name)
        try:
            with open(partial, "wb") as file:
                file.write(dumps(payload).encode())
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add message {name!r} to {self.data_folder_out!r}") from exc

    def _get(self, queue: str) -> dict[str, Any]:
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(self.tmp_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), taken)
            except FileNotFoundError:
                continue  # another reader took it first
            return loads(self._read_once(taken))
        raise Empty()

    @staticmethod
    def _read_once(path: str) -> bytes:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise ChannelError(f"Cannot read message {path!r}") from exc
        finally:
            Path(path).unlink(missing_ok=True)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        # kombu creates a missing table by truncating and then writing it, before it takes the lock readers
        # wait on; an existing table it updates under that lock.
        self._create_table(exchange)
        super()._queue_bind(exchange, routing_key, pattern, queue)

    def _create_table(self, exchange: str) -> None:
        """An empty table for ``exchange`` unless one exists, linked into place whole (``os.link`` never replaces)."""
        table = self.control_folder / f"{exchange}.exchange"
        if table.parent != self.control_folder or table.exists():
            return  # kombu checks the name and refuses a bad one
        self.control_folder.mkdir(parents=True, exist_ok=True)
        empty = Path(self.tmp_folder) / f"{uuid.uuid4()}.exchange"
        empty.write_bytes(dumps([]).encode())
        try:
            os.link(empty, table)
        except FileExistsError:
            pass  # another process created it meanwhile
        finally:
            empty.unlink()


class Transport(filesystem.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        # Celery's loop for transports without an event loop looks for a shutdown request only between waits of
        # 2 s, and waits once more after it: a worker told to stop took 6 s to do so.
        if timeout is not None:
            timeout = min(timeout, SHUTDOWN_CHECK_SECONDS)
        super().drain_events(connection, timeout=timeout)
