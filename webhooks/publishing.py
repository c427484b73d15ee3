import functools
import math
import re
from contextlib import nullcontext
from datetime import timedelta

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, models, transaction
from django.utils import timezone

from config import metrics
from config.db import planned_once
from deliveries.fanout import INSERT_FANOUT_AFTER_EVENT_SQL, create_deliveries, fanout_after_event_params
from deliveries.wake import wake_after_publish
from subscriptions import topics
from subscriptions.models import Tenant
from webhooks import correlation
from webhooks.models import Event
from webhooks.receivers import Candidates, fingerprint_guard, known_candidates, receiving

IDEMPOTENCY_WINDOW = timedelta(hours=24)
RESERVED_PREFIX = "webhook."
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class PublishError(ValueError):
    """An event that cannot be published: bad type, data or tenant."""


def publish(
    event_type: str,
    data: dict,
    *,
    tenant: Tenant | str | None = None,
    idempotency_key: str | None = None,
    idempotency_scope: str = "",
    request_fingerprint: str = "",
    correlation_id: str = "",
) -> Event:
    """Record an event and one pending delivery per matching subscription; workers wake on commit.

    With an ``idempotency_key`` seen in the same scope within 24 hours, returns that first event
    (``event.replayed`` is True) and creates nothing.
    """
    check_event(event_type, data)
    tenant = resolve_tenant(tenant)
    if idempotency_key is not None:
        replay = find_replay(idempotency_scope, idempotency_key)
        if replay:
            return replay
    fields = event_values(
        event_type, data, tenant, idempotency_scope, idempotency_key, request_fingerprint, correlation_id
    )
    try:
        return record_event(fields)
    except IntegrityError:
        # Another request with the same key won the race: answer with its event.
        replay = find_replay(idempotency_scope, idempotency_key) if idempotency_key else None
        if replay is None:
            raise
        return replay


def publish_if(
    condition: tuple[str, dict],
    event_type: str,
    data: dict,
    *,
    tenant: Tenant | None,
    idempotency_scope: str,
    correlation_id: str,
) -> Event | None:
    """``publish()`` without an idempotency key, on condition that the SQL ``condition`` (with its named
    parameters) holds in the insert's own snapshot; PostgreSQL only. The type and data are those that
    ``plainly_valid_event`` accepted: its checks include ``check_event``'s, which is not run twice.

    Returns None, having written nothing, when the condition fails, when the tenant's subscriptions changed
    since this process last read them, or when it has not read them yet: the caller then takes its ordinary
    path, which reads them (so the next call can insert in one statement).
    """
    known = known_candidates(tenant.pk if tenant else None)
    if known is None or connection.vendor != "postgresql":
        return None
    event = new_event(event_values(event_type, data, tenant, idempotency_scope, None, "", correlation_id))
    receivers = known.receiving(event.type)
    if not insert_in_one_statement(event, receivers, known, condition):
        return None
    return published(event, receivers)


def event_values(
    event_type: str,
    data: dict,
    tenant: Tenant | None,
    idempotency_scope: str,
    idempotency_key: str | None,
    request_fingerprint: str,
    correlation_id: str,
) -> dict:
    return {
        "type": event_type,
        "data": data,
        "tenant": tenant,
        "idempotency_scope": idempotency_scope,
        "idempotency_key": idempotency_key,
        "request_fingerprint": request_fingerprint,
        "correlation_id": correlation_id or correlation.get() or correlation.new_id(),
    }


def check_event(event_type: str, data: dict) -> None:
    if not topics.is_valid_event_type(event_type) or event_type.startswith(RESERVED_PREFIX):
        raise PublishError(f"invalid event type {event_type!r}")
    if not isinstance(data, dict):
        raise PublishError("data must be a JSON object")
    if has_unstorable_text(data):
        raise PublishError("data may not contain NUL characters or unpaired surrogates")


def record_event(fields: dict) -> Event:
    # A savepoint only where a duplicate key can fail the insert: the caller's transaction survives it.
    keyed = fields["idempotency_key"] is not None
    postgresql = connection.vendor == "postgresql"
    with transaction.atomic() if keyed or not postgresql else nullcontext():
        if keyed:
            release_expired_key(fields["idempotency_scope"], fields["idempotency_key"])
        event = new_event(fields)
        if postgresql:
            receivers = insert_with_receivers(event)
        else:
            receivers = receiving(event.type, event.tenant)
            event.save(force_insert=True)
            create_deliveries(event, receivers)
    return published(event, receivers)


def published(event: Event, receivers: list[str]) -> Event:
    transaction.on_commit(metrics.EVENTS_PUBLISHED.inc)
    event.delivery_count = len(receivers)
    event.replayed = False
    return event


def new_event(fields: dict) -> Event:
    """``Event(**fields)``, built through ``Model.__init__``'s positional path: the keyword path (each
    field looked up among the keywords, each relation set through its descriptor) was a tenth of a
    ``publish()``'s CPU. A related object in ``fields`` is cached on the event, as the keyword
    path caches it."""
    values = []
    for name, field in event_fields():
        if name not in fields:
            values.append(field.get_default())
        elif field.is_relation:
            values.append(None if fields[name] is None else fields[name].pk)
        else:
            values.append(fields[name])
    event = Event(*values)
    for name, field in event_fields():
        if field.is_relation and name in fields:
            field.set_cached_value(event, fields[name])
    return event


@functools.cache
def event_fields() -> list[tuple[str, models.Field]]:
    return [(field.name, field) for field in Event._meta.concrete_fields]


def insert_with_receivers(event: Event) -> list[str]:
    """PostgreSQL: the event and its deliveries, to the candidates of this process's previous publish if the
    subscriptions are unchanged (one round trip), else to candidates read anew (two)."""
    known = known_candidates(event.tenant_id)
    if known is not None:
        found = known.receiving(event.type)
        if insert_in_one_statement(event, found, known):
            return found
    found = receiving(event.type, event.tenant)
    insert_in_one_statement(event, found)
    return found


def release_expired_key(scope: str, key: str) -> None:
    """A key older than the window may be used again: release it from the old event."""
    Event.objects.filter(
        idempotency_scope=scope, idempotency_key=key, created_at__lt=timezone.now() - IDEMPOTENCY_WINDOW
    ).update(idempotency_key=None)


def insert_in_one_statement(
    event: Event, receivers: list[str], known: Candidates | None = None, condition: tuple[str, dict] | None = None
) -> bool:
    """PostgreSQL: the event and its deliveries in one statement, so one round trip and, outside a
    transaction, one implicit commit instead of BEGIN, two inserts and COMMIT. With ``known``, only if the
    subscriptions are still those candidates in the statement's snapshot, and with ``condition`` (``known``
    required), only if that holds too; returns whether it inserted."""
    sql, fields = insert_event_sql(
        guarded=known is not None, for_tenant=event.tenant_id is not None, condition=condition[0] if condition else ""
    )
    # The connection itself, not the thread-local proxy: a lookup per attribute was a tenth of publish()'s CPU.
    db = connections[DEFAULT_DB_ALIAS]
    params = {}
    for name, field in fields:
        value = getattr(event, field.attname)
        # A string or None for a plain text column is what Django's preparation would give back.
        plain = (value is None or type(value) is str) and name in text_parameters()
        params[name] = value if plain else field.get_db_prep_save(value, db)
    if known is not None:
        params["fingerprint"] = known.fingerprint
    if condition:
        params |= condition[1]
    if receivers:
        sql = f"WITH new_event AS ({sql} RETURNING id, type, created_at), fanout AS ({INSERT_FANOUT_AFTER_EVENT_SQL})"
        params |= fanout_after_event_params(receivers)
    else:
        sql = f"WITH new_event AS ({sql} RETURNING id)"
    with planned_once(db) as cursor:
        cursor.execute(f"{sql} SELECT count(*) FROM new_event", params)  # noqa: S608 - model names
        if not cursor.fetchone()[0]:
            return False
    if receivers:
        # After the statement: outside a transaction on_commit runs at once, and a wake-up sent before the
        # insert let a drain claim too early, find nothing and wait for the next ring (latency).
        db.on_commit(wake_after_publish)
    event._state.adding, event._state.db = False, db.alias
    return True


@functools.cache
def text_parameters() -> frozenset[str]:
    fields = insert_event_sql(guarded=False, for_tenant=False)[1]
    return frozenset(name for name, field in fields if is_text_column(field))


def is_text_column(field: models.Field) -> bool:
    """A column whose value Django prepares as ``str(value)`` only: a CharField, or a relation to one."""
    target = field.target_field if field.is_relation else field
    return type(target) in (models.CharField, models.TextField)


@functools.cache
def insert_event_sql(
    *, guarded: bool, for_tenant: bool, condition: str = ""
) -> tuple[str, list[tuple[str, models.Field]]]:
    fields = [(f"event_{field.attname}", field) for field in Event._meta.concrete_fields]
    columns = ", ".join(connection.ops.quote_name(field.column) for _, field in fields)
    # Typed like their columns (without a length: an explicit cast would truncate, the insert refuses): a
    # prepared statement deduces one type per parameter, and the tenant's also meets a varchar column in
    # the guard.
    values = ", ".join(f"%({name})s::{field.db_type(connection).split('(')[0]}" for name, field in fields)
    insert = f"INSERT INTO {Event._meta.db_table} ({columns})"
    if not guarded:
        if condition:
            raise ValueError("a condition needs the guarded form: pass the known candidates")
        return f"{insert} VALUES ({values})", fields
    where = fingerprint_guard(for_tenant, "event_tenant_id") + (f" AND {condition}" if condition else "")
    return f"{insert} SELECT {values} WHERE {where}", fields


def find_replay(scope: str, key: str) -> Event | None:
    since = timezone.now() - IDEMPOTENCY_WINDOW
    event = Event.objects.filter(idempotency_scope=scope, idempotency_key=key, created_at__gte=since).first()
    if event:
        event.delivery_count = event.deliveries.count()
        event.replayed = True
    return event


def has_unstorable_text(value: object, *, or_non_finite: bool = False) -> bool:
    """NUL and lone surrogates: PostgreSQL's jsonb refuses them and UTF-8 cannot encode them. With
    ``or_non_finite``, also NaN and infinities, which JSON cannot express (``1e999`` parses as infinity)."""
    if isinstance(value, str):
        return UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(
            has_unstorable_text(k, or_non_finite=or_non_finite) or has_unstorable_text(v, or_non_finite=or_non_finite)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(has_unstorable_text(item, or_non_finite=or_non_finite) for item in value)
    return or_non_finite and isinstance(value, float) and not math.isfinite(value)


def resolve_tenant(tenant: Tenant | str | None) -> Tenant | None:
    if tenant is None or isinstance(tenant, Tenant):
        return tenant
    try:
        return Tenant.objects.get(slug=tenant)
    except Tenant.DoesNotExist:
        raise PublishError(f"unknown tenant {tenant!r}") from None
