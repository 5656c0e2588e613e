"""Writing the logs."""
from __future__ import annotations

from .models import AuditEvent


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
