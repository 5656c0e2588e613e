"""Refusals: who may not speak where, or to which agent or tool. Each raises a GatewayError
(safe to show the sender) after writing an audit event, so every refusal can be found later.

The pipeline calls ``check_channel_access`` in its authorize step and ``check_agent_access`` once
the router has picked an agent; the web chat calls ``check_channel_access`` when a socket opens;
the agent runtime asks ``tool_permitted`` before running a tool the model asked for.
"""
from __future__ import annotations

from apps.core.errors import AgentUnavailable, Forbidden, GatewayError
from apps.logs.services import audit, first_refusal

from .permissions import (
    api_key_allows_agent,
    api_key_allows_channel,
    user_can_use_agent,
    user_can_use_channel,
    user_can_use_tool,
)

DEFAULT_REFUSAL_MESSAGE = (
    "Sorry, this channel only answers people it already knows. Please contact us to get access."
)


class Blocked(Forbidden):
    code = "blocked"
    default_message = "Your access has been blocked. Please contact support if you think this is a mistake."


class UnknownSender(Forbidden):
    code = "unknown_sender"
    default_message = DEFAULT_REFUSAL_MESSAGE


def refuse(error: GatewayError, *, action: str, reason: str, actor=None, target=None,
           client_ip: str | None = None, **detail):
    """Audit a refusal, then raise ``error``. Once a minute for the same refusal (action, reason and
    target, from the same user or platform sender, API key and address): a flood of a blocked key
    stays in the request log (apps.logs.services.first_refusal), while another key or address of
    the same user is audited on its own."""
    who = (getattr(actor, "pk", None) or detail.get("external_id"), detail.get("api_key"), client_ip)
    where = (target._meta.label_lower, target.pk) if target is not None else ()
    if first_refusal(action, reason, *who, *where):
        audit(action=action, actor=actor, target=target, client_ip=client_ip, reason=reason,
              code=error.code, **detail)
    raise error


def check_user_active(user, *, channel=None, client_ip: str | None = None) -> None:
    """Disabled and blocked accounts are refused on every channel."""
    where = {"channel": channel.slug} if channel is not None else {}
    if not user.is_active:
        refuse(Forbidden("This account is disabled."), action="user.refused", reason="disabled",
               actor=user, target=user, client_ip=client_ip, **where)
    if user.blocked_at is not None:
        refuse(Blocked(), action="user.refused", reason="blocked", actor=user, target=user,
               client_ip=client_ip, **where)


def check_key_channel_scope(*, user, channel, api_key=None, client_ip: str | None = None) -> None:
    """The API key (if any) is not limited to other channels; refused with reason ``key_scope``."""
    if not api_key_allows_channel(api_key, channel):
        refuse(Forbidden("This API key may not be used on this channel."), action="channel.refused",
               reason="key_scope", actor=user, target=channel, client_ip=client_ip, api_key=api_key.prefix)


def check_channel_access(*, user, channel, api_key=None, client_ip: str | None = None) -> None:
    """The user (and the API key they came with) may talk on ``channel``."""
    check_user_active(user, channel=channel, client_ip=client_ip)
    check_key_channel_scope(user=user, channel=channel, api_key=api_key, client_ip=client_ip)
    if not user_can_use_channel(user, channel):
        refuse(Forbidden("You are not allowed to use this channel."), action="channel.refused",
               reason="permission", actor=user, target=channel, client_ip=client_ip)


AGENT_REFUSED = "You are not allowed to use the assistant that would answer this message."


def check_agent_access(*, user, agent, api_key=None, client_ip: str | None = None,
                       requested: str | None = None) -> None:
    """The user (and their API key) may talk to ``agent``, by role or by object permission.
    ``requested``: the name the agent was asked for by (the face's ``model``)."""
    if not api_key_allows_agent(api_key, agent):
        # Asked for by name (the face): the router's 404 for an agent missing or not the owner's,
        # else the key's holder could list its owner's agents. Chosen by routing: a 403 naming none.
        error = AgentUnavailable(requested) if requested else Forbidden("This API key may not be used with this agent.")
        refuse(error, action="agent.refused", reason="key_scope", actor=user, target=agent, client_ip=client_ip,
               api_key=api_key.prefix)
    if not user_can_use_agent(user, agent):
        # Chosen by routing (asked for by name, the router already answered 404): the sender learns
        # no name of an agent they may not use; the audit row names it.
        refuse(Forbidden(AGENT_REFUSED), action="agent.refused",
               reason="permission", actor=user, target=agent, client_ip=client_ip)


def refuse_unknown_sender(*, channel, external_id: str, client_ip: str | None = None):
    """The channel answers only known senders: a polite reply, and an audit event."""
    refuse(UnknownSender(channel.refusal_message or None), action="sender.refused", reason="unknown_sender",
           target=channel, client_ip=client_ip, external_id=external_id)


def tool_permitted(*, user, tool, message=None) -> bool:
    """Whether ``user`` may run ``tool`` now; a refusal is audited (the caller tells the model)."""
    if user is not None and user_can_use_tool(user, tool):
        return True
    audit(action="tool.refused", actor=user, target=tool, reason="permission",
          tool=getattr(tool, "name", str(tool)),
          message_id=str(message.pk) if message is not None else None)
    return False
