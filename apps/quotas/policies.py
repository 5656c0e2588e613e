"""Effective limits: which policy (or setting) gives each limit of a user, API key or channel.

Policies are few and read on every request, so each process keeps a snapshot of all enabled ones
(gateway_project.config_cache): an admin edit applies at once where it was made and within
GATEWAY_CONFIG_CHECK_SECONDS everywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from gateway_project.config_cache import cached

from .models import Period, QuotaPolicy

BUDGET_FIELDS = ("tokens_per_day", "tokens_per_month", "cost_limit")
FIELDS = ("request_rate", "per_ip_rate", *BUDGET_FIELDS)


@dataclass(frozen=True)
class Limits:
    """One subject's limits. A rate of "" and a budget of None mean unlimited."""

    subject: str  # "user:<uuid>", "api_key:<id>", "channel:<id>"
    request_rate: str = ""
    per_ip_rate: str = ""
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    cost_limit: Decimal | None = None
    cost_period: str = Period.MONTH
    sources: dict = field(default_factory=dict, compare=False)  # limit name → where it came from

    @property
    def has_budget(self) -> bool:
        return any(getattr(self, name) is not None for name in BUDGET_FIELDS)


def _policies() -> dict:
    """{("role", name) | ("user", id) | ("api_key", id) | ("channel", id): QuotaPolicy}."""
    return cached("quota_policies", None, load_policies)


def load_policies() -> dict:
    """The enabled policies as ``_policies()`` keeps them, read from the database now."""
    return {policy_key(policy): policy for policy in QuotaPolicy.objects.filter(enabled=True)}


def policy_key(policy: QuotaPolicy) -> tuple:
    """The policy's place in the table: (scope, the role's name or the subject's id)."""
    target = {"role": policy.role, "user": policy.user_id, "api_key": policy.api_key_id,
              "channel": policy.channel_id}[policy.scope]
    return policy.scope, target


def _merge(subject: str, layers: list[tuple[str, QuotaPolicy | None]], defaults: dict) -> Limits:
    values: dict = {}
    sources: dict = {}
    for name in FIELDS:
        for label, policy in layers:
            value = getattr(policy, name, None) if policy is not None else None
            if value not in (None, ""):
                values[name], sources[name] = value, label
                if name == "cost_limit":
                    values["cost_period"] = policy.cost_period
                break
        else:
            if defaults.get(name):
                values[name], sources[name] = defaults[name][0], defaults[name][1]
    return Limits(subject=subject, sources=sources, **values)


# Each function below reads the policies kept in the process; ``table`` (``load_policies()``'s
# shape) resolves against other policies instead: the database's now, or a change not saved yet.


def user_limits(user, *, role: str | None = None, table: dict | None = None) -> Limits:
    """The user's own policy, else their role's, else GATEWAY_USER_RATE (budgets: none)."""
    table = _policies() if table is None else table
    role = role or user.role  # kept per process with the user's groups (identities.permissions)
    return _merge(
        f"user:{user.pk}",
        [("user policy", table.get(("user", user.pk))), (f"role {role}", table.get(("role", role)))],
        {"request_rate": (settings.GATEWAY_USER_RATE, "setting GATEWAY_USER_RATE")},
    )


def role_limits(role: str, *, table: dict | None = None) -> Limits:
    """What a user of ``role`` with no policy of their own gets."""
    table = _policies() if table is None else table
    return _merge(
        f"role:{role}",
        [(f"role {role}", table.get(("role", role)))],
        {"request_rate": (settings.GATEWAY_USER_RATE, "setting GATEWAY_USER_RATE")},
    )


def api_key_limits(api_key_id, *, table: dict | None = None) -> Limits:
    table = _policies() if table is None else table
    return _merge(
        f"api_key:{api_key_id}",
        [("API key policy", table.get(("api_key", api_key_id)))],
        {"request_rate": (settings.GATEWAY_API_KEY_RATE, "setting GATEWAY_API_KEY_RATE")},
    )


def channel_limits(channel_id, *, table: dict | None = None) -> Limits:
    table = _policies() if table is None else table
    return _merge(
        f"channel:{channel_id}",
        [("channel policy", table.get(("channel", channel_id)))],
        {"request_rate": (settings.GATEWAY_CHANNEL_RATE, "setting GATEWAY_CHANNEL_RATE"),
         "per_ip_rate": (settings.GATEWAY_IP_RATE, "setting GATEWAY_IP_RATE")},
    )


def policy_subject_limits(policy: QuotaPolicy, *, table: dict | None = None) -> Limits | None:
    """The limits of the subject ``policy`` names (a role's: a user of it with no policy of their
    own), resolved against ``table``; None when it names none (a form not validated yet)."""
    scope, target = policy_key(policy)
    if target in (None, ""):
        return None
    if scope == QuotaPolicy.Scope.USER:
        return user_limits(policy.user, table=table)
    if scope == QuotaPolicy.Scope.ROLE:
        return role_limits(target, table=table)
    if scope == QuotaPolicy.Scope.API_KEY:
        return api_key_limits(target, table=table)
    return channel_limits(target, table=table)
