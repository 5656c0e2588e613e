"""The pipeline's *route* step: which agent answers a message.

Order of decisions:
1. An agent the message asks for by name (``control["requested_agent"]``, set by the
   OpenAI-compatible face from ``model``; a client's ``metadata`` cannot ask): that one, if the
   sender may use it, else refused.
2. The rules, by ascending priority, first match wins. For a conversation that already has an
   agent only ``reroutes`` rules apply (conversations stick to their agent until a rule or a
   staff member moves them).
3. The conversation's agent (sticky), else the channel's default agent.
A rule whose agent is disabled or not permitted to the sender is skipped; the pipeline then checks
the final choice (``check_agent_access``: the sender's permission and their API key's scope).
Metadata conditions match the conversation's metadata (staff's) and, on channels whose metadata a
platform vouches for, the message's; never what an API client put in its free-form ``metadata``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from apps.agents.models import agent_by_slug
from apps.conversations.normalized import metadata_vouched_for
from apps.core.errors import AgentUnavailable, NoRoute
from apps.identities.permissions import user_access, user_can_use_agent
from gateway_project.config_cache import cached

from .patterns import pattern_search

logger = logging.getLogger(__name__)

REQUESTED_AGENT_KEY = "requested_agent"  # in NormalizedMessage.control


@dataclass
class RuleCheck:
    route: object
    matched: bool
    reasons: list[str]
    skipped: str = ""  # why a matching rule was not used


@dataclass
class RouteDecision:
    agent: object | None
    route: object | None = None
    reason: str = ""
    checks: list[RuleCheck] = field(default_factory=list)


def route_message(msg, *, channel, user, conversation):
    """The agent that answers ``msg``. Raises NoRoute, NotFound or Forbidden."""
    decision = decide_route(
        text=msg.message, metadata=msg.metadata or {}, channel=channel, user=user, conversation=conversation,
        requested=msg.control.get(REQUESTED_AGENT_KEY),
    )
    if decision.agent is None:
        raise NoRoute()
    # Whether the sender (and their API key) may use the chosen agent is the pipeline's next step
    # (apps.identities.access.check_agent_access), which audits a refusal.
    logger.info("routed", extra={"agent": decision.agent.slug, "route_id": getattr(decision.route, "pk", None),
                                 "route_reason": decision.reason})
    return decision.agent


def decide_route(*, text: str, metadata: dict, channel, user, conversation=None,
                 requested: str | None = None) -> RouteDecision:
    """Which agent would answer, and why (also what the admin's route tester shows).

    ``requested`` is an agent the gateway was asked for by name (the face's ``model``); ``metadata``
    the message's, which counts only where the channel's platform vouches for it."""
    if requested:
        agent = agent_by_slug(str(requested))
        if agent is None or not user_can_use_agent(user, agent):
            # The same answer for "no such agent" and "not yours" (and, in check_agent_access, "not
            # this key's"): names are not disclosed.
            raise AgentUnavailable(requested)
        return RouteDecision(agent=agent, reason=f"requested by name: {agent.slug}")

    sticky = conversation.agent if conversation is not None and conversation.agent_id else None
    vouched = metadata if metadata_vouched_for(channel.kind) else {}
    stored = conversation.metadata if conversation is not None else {}
    merged = {**vouched, **(stored if isinstance(stored, dict) else {})}  # a row written before Conversation.clean
    groups = user_access(user).groups
    decision = RouteDecision(agent=None)
    for route in enabled_routes():
        if sticky is not None and not route.reroutes:
            decision.checks.append(RuleCheck(route, False, ["the conversation already has an agent and this "
                                                            "rule does not reroute"]))
            continue
        matched, reasons = rule_matches(route, text=text, metadata=merged, channel=channel, groups=groups)
        check = RuleCheck(route, matched, reasons)
        decision.checks.append(check)
        if not matched:
            continue
        if not route.agent.enabled:
            check.skipped = f"agent {route.agent.slug} is disabled"
        elif not user_can_use_agent(user, route.agent):
            check.skipped = f"the sender may not use agent {route.agent.slug}"
        else:
            decision.agent, decision.route = route.agent, route
            decision.reason = f"rule {route.name!r} (priority {route.priority}) matched"
            return decision
    if sticky is not None and sticky.enabled:
        decision.agent, decision.reason = sticky, f"the conversation sticks to {sticky.slug}"
    elif channel.default_agent_id and channel.default_agent.enabled:
        default = channel.default_agent
        decision.agent, decision.reason = default, f"the channel's default agent {default.slug}"
    else:
        decision.reason = "no rule matched and the channel has no enabled default agent"
    return decision


def enabled_routes() -> list:
    """The enabled rules by priority, kept per process (gateway_project.config_cache)."""
    from .models import Route

    return cached("routes", None, lambda: list(
        Route.objects.filter(enabled=True).select_related("agent", "channel", "sender_group")))


def rule_matches(route, *, text: str, metadata: dict, channel, groups: dict) -> tuple[bool, list[str]]:
    """(every condition holds, one line per condition saying why it does or does not)."""
    results: list[tuple[bool, str]] = []
    if route.channel_id:
        results.append((route.channel_id == channel.pk, f"channel is {route.channel.slug}"))
    if route.channel_kind:
        results.append((route.channel_kind == channel.kind, f"channel kind is {route.channel_kind}"))
    if route.sender_role:
        results.append((route.sender_role in groups.values(), f"sender has role {route.sender_role}"))
    if route.sender_group_id:
        results.append((route.sender_group_id in groups, f"sender is in group {route.sender_group.name}"))
    if route.command:
        results.append((command_of(text) == route.command.lower(), f"text starts with /{route.command}"))
    if route.keyword:
        results.append((route.keyword.casefold() in text.casefold(), f"text contains {route.keyword!r}"))
    if route.pattern:
        results.append((pattern_search(route.pattern, text), f"text matches /{route.pattern}/"))
    for key, value in (route.metadata or {}).items():
        results.append((key in metadata and metadata[key] == value, f"metadata {key} = {value!r}"))
    if not results:
        return True, ["no conditions: matches every message"]
    return all(ok for ok, _ in results), [("✓ " if ok else "✗ ") + why for ok, why in results]


def command_of(text: str) -> str:
    """``/billing my invoice`` → ``billing``; '' when the text is not a command."""
    if not text.startswith("/"):
        return ""
    return text[1:].split(None, 1)[0].lower() if len(text) > 1 and not text[1].isspace() else ""


