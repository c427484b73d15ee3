"""Cursors for the hot statements: PostgreSQL plans them once per connection, not at every run."""

import functools
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

KEPT = "hookrelay_planned_cursor"


@contextmanager
def planned_once(connection: BaseDatabaseWrapper | None = None) -> Iterator[CursorWrapper]:
    """A cursor whose statements PostgreSQL prepares (parses and plans) once per connection.

    Django binds parameters on the client and turns psycopg's prepared statements off, so PostgreSQL
    parses and plans every statement anew: planning was about 0.23 of the 0.6 ms of PostgreSQL's CPU
    that one ``publish()`` cost. This is a psycopg server-side-binding cursor that prepares,
    inside Django's wrapper (errors become Django's, queries are logged as usual). A transaction-pooling
    PgBouncer older than 1.21 cannot follow prepared statements: set ``WEBHOOK_PREPARED_STATEMENTS``
    to false there.
    """
    connection = connection or connections[DEFAULT_DB_ALIAS]  # once: each use of the proxy is a lookup
    if connection.vendor != "postgresql" or not settings.WEBHOOK_PREPARED_STATEMENTS:
        with connection.cursor() as cursor:
            yield cursor
        return
    pg = connection.connection
    if pg is not None and connection.health_check_enabled and not connection.health_check_done:
        # Django's CONN_HEALTH_CHECKS guard its own cursors at a request's first use of the connection with
        # a "SELECT 1" round trip; this cursor skips them, so it checks without one: a server that ended the
        # session (restart, pg_terminate_backend, idle timeout) has said so on the idle socket.
        connection.health_check_done = True
        if hung_up(pg):
            connection.close()
            pg = None
    if pg is None:
        connection.ensure_connection()
        pg = connection.connection
    if pg.prepare_threshold is None:
        # psycopg prepares nothing while the threshold is None, not even on request. Django's own cursors
        # bind on the client and never prepare, so this only lets ours.
        pg.prepare_threshold = 2**31
    if connection.queries_logged:
        with PreparedDebugWrapper(_preparing_cursor_class()(pg), connection) as cursor:
            yield cursor
        return
    # One cursor per connection, kept between statements: making and closing one (psycopg's cursor with
    # its adapters, Django's wrapper) made this block cost 8-10 us of CPU, now 3-4; 626,045 -> 589,277
    # instructions per publish(). Taken while in use, so a statement run inside another's
    # block gets a cursor of its own.
    kept = connection.__dict__.pop(KEPT, None)
    cursor = kept if kept is not None and kept.cursor.connection is pg and not kept.cursor.closed else None
    if cursor is None:
        cursor = connection.make_cursor(_preparing_cursor_class()(pg))
    try:
        yield cursor
    finally:
        connection.__dict__[KEPT] = cursor


def hung_up(pg) -> bool:
    """Whether an idle psycopg connection is closed, or its server has sent something unasked (the error
    that ends a session, then end of file): one poll with no wait, no round trip."""
    if pg.closed or pg.broken:
        return True
    poller = select.poll()
    poller.register(pg.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class PreparedDebugWrapper(CursorDebugWrapper):
    """Logs the statement's text with its placeholders: psycopg keeps no text of a prepared run, so
    Django's usual rendering of the executed query would log None."""

    def debug_sql(self, sql=None, params=None, use_last_executed_query=False, many=False):
        return super().debug_sql(sql, params, use_last_executed_query=False, many=many)


@functools.cache
def _preparing_cursor_class() -> type:
    import psycopg

    class PreparingCursor(psycopg.Cursor):
        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)

    return PreparingCursor


def pattern_index_dropper(table: str) -> Callable[..., None]:
    """A migration step (``RunPython``) that drops the ``varchar_pattern_ops`` copies Django adds on
    PostgreSQL to a table's indexed text columns, for ``LIKE 'prefix%'``.

    Our ids and event types are looked up by equality only (the admin's search is ``icontains``, which
    such an index cannot serve), and every insert writes each index of its table. Django does not track
    these indexes: an ``AlterField`` of such a column later would add its copy again.
    """

    def drop(apps, schema_editor) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%varchar_pattern_ops%%'",
                [table],
            )
            for (name,) in cursor.fetchall():
                cursor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")

    return drop
