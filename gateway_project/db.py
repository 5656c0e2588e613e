"""Database work from async code; telling a database outage from a bug, and riding one out where
the work is already paid for."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TypeVar

from asgiref.sync import AsyncToSync, sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import Model
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from gateway_project.plain import is_plain

logger = logging.getLogger(__name__)
T = TypeVar("T")


def database_sync_to_async(func):
    """Run ``func`` on the event loop's shared thread pool, giving its database connection back after.

    asgiref's default (thread_sensitive) runs an HTTP request's sync code on a thread made for that
    request, and a websocket's on one thread shared by every socket of the process. The first paid,
    on every request, for a thread and for everything kept per thread (the database wrapper, Celery's
    and kombu's clients); the second queued every socket's database work behind one another. The
    pool's threads are long-lived, so each call returns its connection (to the connection pool, or
    closes it) in the thread that used it: a thread holding one would starve the pool.

    When sync code is waiting on this event loop (``async_to_sync``: Django's test client, a
    management command), ``func`` runs in that code's thread instead, as asgiref would run it, so
    it sees that thread's connection and open transaction.
    """
    if is_plain("asgiref_executor"):
        from channels.db import database_sync_to_async as channels_database_sync_to_async

        return channels_database_sync_to_async(func)

    @functools.wraps(func)
    def run_and_release(*args, **kwargs):
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    pooled = sync_to_async(run_and_release, thread_sensitive=False)
    in_caller_thread = sync_to_async(func)

    @functools.wraps(func)
    async def call(*args, **kwargs):
        if getattr(AsyncToSync.executors, "current", None) is not None:
            return await in_caller_thread(*args, **kwargs)
        return await pooled(*args, **kwargs)

    return call


def stored(model, field: str, value):
    """``value`` of ``model.field`` as the database stores it, for a raw statement's parameters
    (SQLite keeps uuids as hex and datetimes as naive UTC text; decimals are quantized)."""
    return model._meta.get_field(field).get_db_prep_value(value, connection)


@dataclass(frozen=True)
class Update:
    """``model``'s row ``pk`` gets ``values`` (field name → value), as ``QuerySet.update()`` sets them;
    with ``only_if`` (field name → value), only while the row still holds those values."""

    model: type
    pk: object
    values: dict
    only_if: dict | None = None


@dataclass(frozen=True)
class Statement:
    """A data-modifying statement of its own (``sql`` with ``params``), e.g. an upsert."""

    sql: str
    params: list

    def execute(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, self.params)


def write_together(first, obj) -> bool:
    """``first`` (an unsaved instance to insert, an ``Update`` or a ``Statement``) and then the insert
    of the unsaved ``obj``, atomically: a write that must go in whole, on the hot path (an accepted
    message, a reply, a model call and its usage).

    PostgreSQL: one statement, ``WITH written AS (first) INSERT obj``, atomic on its own and one round
    trip instead of four (BEGIN, two writes, COMMIT); rows ``first`` updates stay locked until ``obj``
    is in, as in a transaction. Inside a caller's transaction it runs in a savepoint, so an
    IntegrityError (a duplicate) leaves that transaction usable. Other databases: the ORM, in a
    transaction. No pre_save/post_save signal is sent on PostgreSQL. ``first``, if an instance, must
    have its primary key; ``obj`` may leave an auto-increment one to the database (it is set here).
    Returns False, writing nothing, when ``first`` is an ``Update`` whose ``only_if`` no longer holds.
    """
    conditional = isinstance(first, Update) and first.only_if is not None
    if connection.vendor != "postgresql" or is_plain("one_statement_writes"):
        with transaction.atomic():
            if isinstance(first, Update):
                if not first.model.objects.filter(pk=first.pk, **(first.only_if or {})).update(**first.values):
                    return False
            elif isinstance(first, Statement):
                first.execute()
            else:
                first.save(force_insert=True)
            obj.save(force_insert=True)
        return True
    if isinstance(first, Update):
        head, head_params = _update_sql(first)
    elif isinstance(first, Statement):
        head, head_params = first.sql, first.params
    else:
        if first.pk is None:
            raise ValueError(f"{type(first).__name__} has no primary key yet")
        head, head_params = _insert_sql(first)
    insert, params = _insert_sql(obj, only_after_written=conditional)
    with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
        cursor.execute(f"WITH written AS ({head}) {insert}", [*head_params, *params])
        if conditional and cursor.rowcount == 0:
            return False
        if obj.pk is None:
            obj.pk = cursor.fetchone()[0]
    for saved in (first, obj) if isinstance(first, Model) else (obj,):  # what save() records
        saved._state.adding = False
        saved._state.db = connection.alias
    return True


def update_then_fetch(update: Update, query: str, params: list):
    """``update``, then the first row of ``query`` (or None): one statement on PostgreSQL
    (``WITH written AS (update) query``), two elsewhere. For an update and a lookup that go one after
    the other on the hot path; the query should not read the updated row (PostgreSQL shows it as it
    was before the update, other databases as after)."""
    head, head_params = _update_sql(update)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and not is_plain("one_statement_writes"):
            cursor.execute(f"WITH written AS ({head}) {query}", [*head_params, *params])
        else:
            cursor.execute(head, head_params)
            cursor.execute(query, params)
        return cursor.fetchone()


def _insert_sql(obj, *, only_after_written: bool = False) -> tuple[str, list]:
    """``INSERT`` for the unsaved ``obj`` and its parameters, as ``obj.save()`` would store it
    (auto_now fields set, every value prepared by its field). Without a primary key, the database
    numbers the row (an auto-increment key) and the statement returns it. ``only_after_written``:
    the row goes in only if the ``written`` CTE before it returned a row."""
    auto_pk = obj.pk is None
    if auto_pk and not getattr(obj._meta.pk, "db_returning", False):
        raise ValueError(f"{type(obj).__name__} has no primary key yet")
    sql, fields = _insert_template(type(obj), auto_pk, only_after_written)
    return sql, [field.get_db_prep_save(field.pre_save(obj, add=True), connection) for field in fields]


@functools.cache
def _insert_template(model, auto_pk: bool = False, only_after_written: bool = False) -> tuple[str, tuple]:
    quote, pk = connection.ops.quote_name, model._meta.pk
    fields = tuple(f for f in model._meta.concrete_fields if not (auto_pk and f is pk))
    columns = ", ".join(quote(field.column) for field in fields)
    values = ", ".join(["%s"] * len(fields))
    rows = f"SELECT {values} WHERE EXISTS (SELECT 1 FROM written)" if only_after_written else f"VALUES ({values})"
    returning = f" RETURNING {quote(pk.column)}" if auto_pk else ""
    return f"INSERT INTO {quote(model._meta.db_table)} ({columns}) {rows}{returning}", fields


def _update_sql(update: Update) -> tuple[str, list]:
    """``UPDATE`` and its parameters, as ``QuerySet.update()`` writes them (auto_now fields are left
    alone); with ``only_if``, it returns the row it updated."""
    meta, quote = update.model._meta, connection.ops.quote_name
    columns = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in update.values)
    conditions = "".join(f" AND {quote(meta.get_field(name).column)} = %s" for name in update.only_if or {})
    returning = " RETURNING 1" if update.only_if is not None else ""
    sql = f"UPDATE {quote(meta.db_table)} SET {columns} WHERE {quote(meta.pk.column)} = %s{conditions}{returning}"
    params = [meta.get_field(name).get_db_prep_save(value, connection) for name, value in update.values.items()]
    checks = [stored(update.model, name, value) for name, value in (update.only_if or {}).items()]
    return sql, [*params, stored(update.model, meta.pk.name, update.pk), *checks]


# SQLSTATEs that say "try again" rather than "this statement is wrong": connection exceptions (08),
# operator intervention — a cancelled statement, shutdown, crash recovery (57014, 57P0x) —,
# insufficient resources such as too many connections (53), a lock not available (55P03), and
# serialization failures and deadlocks (40001, 40P01).
TRANSIENT_SQLSTATES = ("08", "57014", "57P", "53", "55P03", "40001", "40P01")


def is_database_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is the database being unreachable or interrupted (worth retrying), not a
    bug in a statement (which would fail the same way again)."""
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(TRANSIENT_SQLSTATES)
    if connection.vendor == "sqlite":  # SQLite reports its syntax errors as OperationalError too
        return "locked" in str(exc) or "busy" in str(exc)
    # No SQLSTATE: no server answered — the connection broke, or none could be had from the pool.
    return True


def through_outage(step: Callable[[], T], *, tries: int = 4, first_delay: float = 0.5) -> T:
    """``step()``, tried again after 0.5, 1, 2 s when the database is out (giving the broken
    connection back first). For writes of work already paid for, such as a model's answer, which a
    retry from the start would pay for again. Inside a transaction the error goes straight through."""
    def is_outage_outside_transaction(exc: BaseException) -> bool:
        return (isinstance(exc, (OperationalError, InterfaceError)) and not connection.in_atomic_block
                and is_database_outage(exc))

    def give_connection_back(state: RetryCallState) -> None:
        logger.warning("database unavailable; trying the write again",
                       extra={"error": str(state.outcome.exception())[:300]})
        connection.close()

    retrying = Retrying(stop=stop_after_attempt(tries), wait=wait_exponential(multiplier=first_delay),
                        retry=retry_if_exception(is_outage_outside_transaction),
                        before_sleep=give_connection_back, reraise=True)
    return retrying(step)
