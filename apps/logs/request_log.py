"""One RequestLog row per inbound request at an entry point, written off the request path.

Entry points call ``request_log_record(...)`` (HTTP entry points get it from RequestLogMiddleware;
the web chat consumer calls it per frame). The row goes into a buffer and ``request_log_flush()``
(the ``logs.flush_request_logs`` beat task) writes buffered rows in batches. Recording never raises:
a logging problem must not turn into a failed request.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from datetime import UTC, datetime

from django.conf import settings
from django.core.exceptions import ValidationError

from apps.conversations.models import Direction, Message

from . import metrics
from .buffer import make_buffer
from .models import AuditEvent, RequestLog
from .services import first_refusal

logger = logging.getLogger(__name__)

_buffer = None
_buffer_lock = threading.Lock()
_flush_lock = threading.Lock()
FLUSH_LOCK_KEY = "gateway:logbuffer:requests:flushing"
# Refusals that are security events (bad credentials, forbidden, blocked) also get an audit row,
# the first of each kind a minute (services.first_refusal); floods of them, and of rate-limited or
# malformed requests, stay in the request log only.
AUDITED_REFUSAL_STATUSES = frozenset({401, 403})
FLUSH_LOCK_SECONDS = 120  # a crashed flusher's lock expires after this long


def request_buffer():
    global _buffer
    if _buffer is None:
        with _buffer_lock:
            if _buffer is None:
                _buffer = make_buffer("requests")
    return _buffer


def request_log_record(
    *,
    status_code: int,
    rejection: str = "",
    reason: str = "",
    channel=None,
    channel_slug: str = "",
    channel_kind: str = "",
    user=None,
    message=None,
    api_key=None,
    client_ip: str | None = None,
    latency_ms: int = 0,
    request_id: str | None = None,
) -> None:
    """Record one inbound request: counted in the metrics now, stored by the next flush.

    ``rejection`` is the refusing GatewayError's ``code`` (empty when accepted), ``reason`` its
    finer reason if it gave one (kept in the audit event, not the row). ``channel`` (a
    Channel) or ``channel_slug`` names the channel; ``user``/``message``/``api_key`` are model
    instances or ids. Never raises.
    """
    try:
        if channel is not None:
            channel_slug = channel.slug
            channel_kind = channel_kind or channel.kind
        row = {
            "status_code": int(status_code),
            "rejection": (rejection or "")[:64],
            "reason": (reason or "")[:64],
            "channel_slug": channel_slug or "",
            "channel_kind": (channel_kind or "")[:32],
            "user_id": _pk(user),
            "message_id": _pk(message),
            "api_key_id": _pk(api_key),
            "client_ip": client_ip or None,
            "latency_ms": max(0, int(latency_ms)),
            "request_id": (request_id or "")[:64],
            "ts": time.time(),
        }
        metrics.request_observed(
            channel=channel_kind or channel_slug or "unknown", status_code=int(status_code),
            rejection=row["rejection"], latency_ms=row["latency_ms"],
        )
        request_buffer().push(row)
    except Exception:
        logger.exception("request log record failed")


def request_log_flush(*, batch_size: int | None = None) -> int:
    """Write buffered request rows to the database; returns how many were written.

    One flusher at a time (a Redis lock in services mode), so a slow flush and the next beat tick
    never write the same rows twice.
    """
    batch_size = batch_size or settings.GATEWAY_LOG_FLUSH_BATCH_ROWS
    buffer = request_buffer()
    written = 0
    with _flusher_lock() as acquired:
        if not acquired:
            return 0
        while rows := buffer.peek(batch_size):
            _write_rows(rows)
            buffer.discard(len(rows))
            written += len(rows)
    return written


@contextlib.contextmanager
def _flusher_lock():
    """True while this caller is the only flusher (in this process, and across processes via Redis)."""
    if not _flush_lock.acquire(blocking=False):
        yield False
        return
    token = None
    try:
        if settings.REDIS_URL:
            from .buffer import redis_client

            token = uuid.uuid4().hex
            if not redis_client().set(FLUSH_LOCK_KEY, token, nx=True, ex=FLUSH_LOCK_SECONDS):
                token = None
                yield False
                return
        yield True
    finally:
        if token is not None:
            client = redis_client()
            if client.get(FLUSH_LOCK_KEY) == token.encode():
                client.delete(FLUSH_LOCK_KEY)
        _flush_lock.release()


def _write_rows(rows: list[dict]) -> None:
    """One bulk INSERT; links to rows deleted since the request (a user, a message) are dropped."""
    # The models this log's foreign keys point to, found through them: logs imports no connector.
    Channel, User, ApiKey = (  # noqa: N806
        RequestLog._meta.get_field(name).related_model for name in ("channel", "user", "api_key"))
    _link_messages_by_request_id(rows)
    slugs = {row["channel_slug"] for row in rows if row["channel_slug"]}
    channels = {slug: (pk, kind) for slug, pk, kind in
                Channel.objects.filter(slug__in=slugs).values_list("slug", "id", "kind")} if slugs else {}
    users = _existing(User, {row["user_id"] for row in rows})
    messages = _existing(Message, {row["message_id"] for row in rows})
    api_keys = _existing(ApiKey, {row["api_key_id"] for row in rows})
    logs = RequestLog.objects.bulk_create([
        RequestLog(
            channel_id=channels.get(row["channel_slug"], (None, ""))[0],
            channel_kind=row["channel_kind"] or channels.get(row["channel_slug"], (None, ""))[1],
            user_id=row["user_id"] if row["user_id"] in users else None,
            message_id=row["message_id"] if row["message_id"] in messages else None,
            api_key_id=row["api_key_id"] if row["api_key_id"] in api_keys else None,
            status_code=row["status_code"], rejection=row["rejection"], client_ip=row["client_ip"],
            latency_ms=row["latency_ms"], request_id=row["request_id"],
            created_at=datetime.fromtimestamp(row["ts"], tz=UTC),
        )
        for row in rows
    ])
    refusals: dict[tuple, tuple[dict, RequestLog]] = {}  # the first row of each kind in the batch
    for row, log in zip(rows, logs, strict=True):
        if log.status_code in AUDITED_REFUSAL_STATUSES:
            kind = (log.rejection, row.get("reason", ""), row["channel_slug"], log.user_id, log.api_key_id,
                    log.client_ip)
            refusals.setdefault(kind, (row, log))
    AuditEvent.objects.bulk_create([
        AuditEvent(
            actor_id=log.user_id, action="request.refused", target_type="logs.requestlog",
            target_id=str(log.pk or ""), client_ip=log.client_ip,
            detail={"code": log.rejection, "status": log.status_code, "channel": log.channel_kind,
                    "request_id": log.request_id, **({"reason": row["reason"]} if row.get("reason") else {})},
        )
        for kind, (row, log) in refusals.items() if first_refusal("request.refused", *kind)
    ])


def _link_messages_by_request_id(rows: list[dict]) -> None:
    """Entry points that do not name the message they accepted (webhooks answer the platform, not
    with our ids) are linked through the request id the pipeline stored on the message, on the
    row's own channel and to the row's own user's: a client chooses its X-Request-ID, and reusing
    one must not link a message of another channel or another sender (whose text the row's page
    would show). A row that names no user (a webhook's: the platform's signed request) takes the
    message's sender."""
    wanted = {row["request_id"] for row in rows
              if row["request_id"] and row["channel_slug"] and not row["message_id"] and row["status_code"] < 400}
    if not wanted:
        return
    found: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for request_id, slug, message_id, sender_id in (
        Message.objects.filter(request_id__in=wanted, direction=Direction.INBOUND)
        .order_by("created_at").values_list("request_id", "channel__slug", "id", "sender_id")
    ):
        found.setdefault((request_id, slug), []).append((str(message_id), str(sender_id) if sender_id else None))
    for row in rows:
        if row["message_id"] or row["status_code"] >= 400:
            continue
        candidates = found.get((row["request_id"], row["channel_slug"]), [])
        if match := next((m for m in candidates if row["user_id"] in (None, m[1])), None):
            row["message_id"], row["user_id"] = match[0], row["user_id"] or match[1]


def _existing(model, ids: set) -> set[str]:
    """Which of ``ids`` (as strings) still exist; malformed ids count as missing."""
    ids = {i for i in ids if i}
    if not ids:
        return set()
    valid = set()
    for value in ids:
        try:
            model._meta.pk.to_python(value)
            valid.add(value)
        except (ValidationError, ValueError, TypeError):
            continue
    return {str(pk) for pk in model.objects.filter(pk__in=valid).values_list("pk", flat=True)}


def _pk(value):
    if value is None:
        return None
    pk = getattr(value, "pk", value)
    return str(pk) if pk is not None else None
