"""Writing the logs."""
from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.core.cache import cache

from .models import AuditEvent

logger = logging.getLogger(__name__)

# The same refusal again within this long (its action and reason, from the same user or address)
# is not audited again: a flood stays in the request log, which has every request.
REFUSAL_AUDIT_EVERY_SECONDS = 60


def audit(*, action: str, actor=None, target=None, before=None, after=None, client_ip: str | None = None,
          **detail) -> AuditEvent:
    """Record a security-relevant event. ``target`` is any model instance (type and pk are kept)."""
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        before=before, after=after, detail=detail, client_ip=client_ip,
    )


def first_refusal(*kind) -> bool:
    """Whether this refusal (``kind``: its action, reason, who, ...) is the first of its kind within
    REFUSAL_AUDIT_EVERY_SECONDS: set-if-absent in the shared cache, so every process counts the same
    window. True when the cache cannot tell: a row too many rather than a refusal unaudited."""
    digest = hashlib.sha256("\0".join(str(part) for part in kind).encode()).hexdigest()[:32]
    try:
        return bool(cache.add(f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:refused:{digest}", 1,
                              timeout=REFUSAL_AUDIT_EVERY_SECONDS))
    except Exception:
        logger.warning("refusal audited without its window: cache unavailable")
        return True
