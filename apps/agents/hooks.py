"""What the agent run asks of the apps above it, registered by them at start-up.

``agents`` sits below ``routing`` and ``connectors`` (docs/decisions/import-linter.md), yet the run
must ask routing whether a human has the conversation, and find the channel (and so the connector)
a message came in on. It imports neither: each app hands its answer in from ``AppConfig.ready()``:

- ``register_handoff`` — ``RoutingConfig.ready()`` registers ``apps.routing.services.RUN_HANDOFF``
  (the handoff hold, the staff inbox's announcement, the recovery's "held for a human" filter);
- ``register_channel_lookup`` — ``ConnectorsConfig.ready()`` registers
  ``apps.connectors.models.channel_by_id`` (the per-process cached channel row).

A hook asked for before it is registered raises ImproperlyConfigured: both apps are installed
apps, so a missing hook is a broken install, never a reason to skip the step.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Exists


class Handoff(Protocol):
    """Routing's human handoff, as the run sees it."""

    def hold(self, message) -> bool:
        """True (and the message put back, unanswered) if a human has the conversation."""

    def announce_if_held(self, message_id) -> None:
        """Tell the staff inbox of a message waiting in a conversation a human has."""

    def in_open_handoff(self) -> Exists:
        """A filter on messages: their conversation is held by a human (for recovery to skip)."""


_handoff: Handoff | None = None
_channel_by_id: Callable[[Any], Any] | None = None


def register_handoff(handoff: Handoff) -> None:
    global _handoff
    _handoff = handoff


def register_channel_lookup(channel_by_id: Callable[[Any], Any]) -> None:
    global _channel_by_id
    _channel_by_id = channel_by_id


def handoff() -> Handoff:
    if _handoff is None:
        raise ImproperlyConfigured("No handoff registered for the agent run (apps.routing not ready).")
    return _handoff


def channel_by_id(pk):
    """The channel with primary key ``pk`` (a per-process copy), or None."""
    if _channel_by_id is None:
        raise ImproperlyConfigured("No channel lookup registered for the agent run (apps.connectors not ready).")
    return _channel_by_id(pk)
