"""Configuration read on every message, kept in each process until somebody changes it.

Channels, agents (with their fallbacks and tools), routes, API key scopes and each user's roles and
permissions change rarely, yet every request and every agent run reads them: loading them from
PostgreSQL each time was most of the gateway's per-message work. Each process keeps what it has
loaded. Any change saved through the ORM (the admin, commands, services; see ``watch()``) drops
this process's copies at once and, after the transaction commits, writes a new generation token to
the shared cache (``CACHES["config"]``: Redis, or a file on the embedded default). Every process
compares that token at most every GATEWAY_CONFIG_CHECK_SECONDS
(default 1 s) and drops its copies when it differs: a change applies at once in the process that
made it and within that time everywhere else.

``QuerySet.update()`` sends no signal: call ``config_changed()`` after one on these models. When
the shared cache is unreachable nothing is kept (every read goes to the database).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

logger = logging.getLogger(__name__)

GENERATION_KEY = "gateway:config-generation"
T = TypeVar("T")

_lock = threading.Lock()
_entries: dict[tuple, object] = {}
_epoch = 0  # bumped whenever _entries is emptied, so a load that raced a change is not kept
_shared_token: object = None  # the shared generation the entries belong to
_checked_at = float("-inf")
_checking: threading.Event | None = None  # set once the caller asking for the shared generation has its answer
CHECK_WAIT_SECONDS = 0.25  # how long callers wait for that answer before using what is kept
_reachable = True  # whether the last look at the shared generation succeeded
_quiet = threading.local()
_watched_fields: dict[type, frozenset[str]] = {}


def cached(namespace: str, key, load: Callable[[], T]) -> T:
    """The value kept for (namespace, key), else ``load()`` (kept unless a change raced it).

    Values are shared by every thread of the process: treat them as read-only. ``None`` (nothing
    found) is not kept: keys can be names a caller chose (a webhook slug, a requested model), and
    misses must not grow the cache. At GATEWAY_CONFIG_CACHE_MAX_ENTRIES (one per active user,
    among others) everything is dropped and reloaded as needed.
    """
    if not _in_sync():
        return load()
    entry_key = (namespace, key)
    try:
        return _entries[entry_key]  # type: ignore[return-value]
    except KeyError:
        pass
    epoch = _epoch
    value = load()
    if value is None:
        return value
    with _lock:
        if epoch == _epoch:
            if len(_entries) >= settings.GATEWAY_CONFIG_CACHE_MAX_ENTRIES:
                _entries.clear()
            _entries[entry_key] = value
    return value


def cached_copy(namespace: str, key, load: Callable[[], T]) -> T:
    """``cached()`` for a model row a caller may change: each call gets its own (shallow) copy."""
    value = cached(namespace, key, load)
    return None if value is None else copy.copy(value)


def config_changed() -> None:
    """Forget everything here now, and tell the other processes once the change is committed."""
    clear()
    transaction.on_commit(_publish_generation)


@contextlib.contextmanager
def unchanged():
    """Saves inside this block are not configuration changes: for rows nobody can have cached yet
    (a customer seen for the first time, given the customer role)."""
    previous = getattr(_quiet, "on", False)
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = previous


def clear() -> None:
    """Forget everything this process keeps (tests call this between tests)."""
    global _checked_at
    with _lock:
        _drop_entries()
        _checked_at = float("-inf")


def _drop_entries() -> None:
    """Under _lock: empty the entries; a load that started before this is not kept."""
    global _epoch
    _entries.clear()
    _epoch += 1


def _publish_generation() -> None:
    try:
        reload_everywhere()
    except Exception:  # the shared cache is down: other processes stop caching until it is back
        logger.warning("could not publish a configuration change to the shared cache")


def reload_everywhere() -> None:
    """Drop what this process keeps and write a new shared generation, so every other process drops
    its entries within GATEWAY_CONFIG_CHECK_SECONDS (``manage.py reload_config``). Raises if the
    shared cache cannot be written."""
    clear()  # anything loaded between a change and its commit may be the old state
    caches["config"].set(GENERATION_KEY, uuid.uuid4().hex, None)


def _in_sync() -> bool:
    """Whether the kept entries may be used: the shared generation is the one they belong to.

    While the shared cache cannot be read, nothing is kept (a change elsewhere could go unseen);
    it is asked again at the next interval, not on every lookup. One caller asks when the interval
    is up. Those arriving meanwhile (a burst after a quiet spell, a gevent worker's greenlets) wait
    for its answer, up to CHECK_WAIT_SECONDS: a change made elsewhere is not read from old copies
    by a burst that arrives together with the check. Past that wait (a slow shared cache), they go
    on with what is kept.
    """
    global _shared_token, _checked_at, _reachable, _checking
    if time.monotonic() - _checked_at < settings.GATEWAY_CONFIG_CHECK_SECONDS:
        return _reachable
    with _lock:
        if time.monotonic() - _checked_at < settings.GATEWAY_CONFIG_CHECK_SECONDS:
            return _reachable
        asking = _checking
        if asking is None:
            _checking = answered = threading.Event()
    if asking is not None:  # another caller is asking: one question per interval, not one each
        asking.wait(CHECK_WAIT_SECONDS)
        return _reachable
    token, reachable = None, False
    try:
        token, reachable = caches["config"].get(GENERATION_KEY), True
    except Exception:
        pass
    finally:
        with _lock:
            if not reachable or token != _shared_token or not _reachable:
                _drop_entries()
                _shared_token = token
            _reachable = reachable
            _checked_at = time.monotonic()
            _checking = None
        answered.set()
    return reachable


def watch(*models, m2m_through=(), fields: dict | None = None) -> None:
    """Treat saves and deletes of ``models`` and membership changes of the ``m2m_through``
    tables as configuration changes. ``fields`` ({model: names}) limits a model's saves to those
    that may change one of these fields. Called from AppConfig.ready()."""
    for model, names in (fields or {}).items():
        _watched_fields[model] = frozenset(names)
    for model in models:
        post_save.connect(_on_change, sender=model, weak=False, dispatch_uid=f"config-save-{model._meta.label}")
        post_delete.connect(_on_change, sender=model, weak=False,
                            dispatch_uid=f"config-delete-{model._meta.label}")
    for through in m2m_through:
        m2m_changed.connect(_on_m2m_change, sender=through, weak=False,
                            dispatch_uid=f"config-m2m-{through._meta.label}")


def _on_change(sender, created: bool = False, update_fields=None, **kwargs) -> None:
    if getattr(_quiet, "on", False):
        return
    names = _watched_fields.get(sender)
    if names is not None and (created or (update_fields is not None and not names & set(update_fields))):
        return  # a new row, or a save that left the fields read from the cache alone
    config_changed()


def _on_m2m_change(action: str, **kwargs) -> None:
    if action in ("post_add", "post_remove", "post_clear") and not getattr(_quiet, "on", False):
        config_changed()
