"""IP allow/deny rules, global and per channel (CIDR, IPv4 and IPv6).

The rules change rarely and are checked on every request: each process keeps them
(gateway_project.config_cache), and an edit applies at once where it was made and within
GATEWAY_CONFIG_CHECK_SECONDS everywhere else.
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

from apps.core.client_ip import parse_ip
from apps.core.errors import IpForbidden
from gateway_project.config_cache import cached

from .metrics import count_rejection
from .models import IpRule


@dataclass
class _RuleSet:
    allow: list = field(default_factory=list)
    deny: list = field(default_factory=list)


def _rules() -> dict:
    """{channel_id or None: _RuleSet}, from the process cache."""
    return cached("ip_rules", None, _load_rules)


def _load_rules() -> dict:
    rules: dict = defaultdict(_RuleSet)
    for channel_id, action, cidr in IpRule.objects.filter(enabled=True).values_list("channel_id", "action", "cidr"):
        network = ipaddress.ip_network(cidr, strict=False)
        getattr(rules[channel_id], action).append(network)
    return dict(rules)


def ip_allowed(client_ip: str | None, *, channel=None) -> bool:
    """Whether ``client_ip`` may reach ``channel`` (None: only the global rules count)."""
    rules = _rules()
    if not rules:
        return True
    address = parse_ip(client_ip)
    scopes = [rules.get(None)] + ([rules.get(channel.pk)] if channel is not None else [])
    for ruleset in filter(None, scopes):
        if address is not None and any(address in net for net in ruleset.deny):
            return False
        if ruleset.allow and (address is None or not any(address in net for net in ruleset.allow)):
            return False
    return True


def check_ip_rules(client_ip: str | None, *, channel=None) -> None:
    """Raise IpForbidden (403) unless ``client_ip`` may reach ``channel``.

    Webhook views can call this first thing, before verifying or parsing the body; the pipeline
    calls it again for every message (cheap: the rules are cached in the process).
    """
    if not ip_allowed(client_ip, channel=channel):
        count_rejection("ip_forbidden", channel)
        raise IpForbidden()
