"""``GATEWAY_PLAIN``: run a library's own path instead of one of the gateway's overrides of it.

Each override of a library's internals, and each hand-built hot-path statement, stays only while a
same-run A/B shows it pays (bench/overrides_ab.py, bench/README.md "Overrides: same-run A/B").
This switch exists to take that measurement: ``GATEWAY_PLAIN=middleware,openai_create`` runs
those two the library's documented way; empty (the default) is the gateway's usual behaviour.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# name -> (where the override lives, what runs instead when the name is listed)
OVERRIDES = {
    "redis_pool": ("gateway_project/redis_pool.py", "Django's RedisCache, no pool_class"),
    "middleware": ("gateway_project/middleware.py", "Django's own middleware classes"),
    "openai_create": ("apps/agents/llm.py _create", "client.chat.completions.create"),
    "asgiref_executor": ("gateway_project/db.py database_sync_to_async",
                         "channels.db.database_sync_to_async (asgiref's thread-sensitive executor)"),
    "adrf_dispatch": ("apps/conversations/async_api.py AsyncAPIView.async_dispatch", "adrf's own async_dispatch"),
    "one_statement_writes": ("gateway_project/db.py write_together, update_then_fetch",
                             "the ORM: a transaction with one statement per row"),
    "raw_sql": ("apps/agents/claims.py CLAIM_SQL, apps/agents/delivery.py NEXT_WAITING_SQL, "
                "apps/conversations/pipeline.py SEEN_SQL and _conversation",
                "the ORM: a conditional update then a read for the claim, querysets for the lookups"),
}


def parse(value: str) -> frozenset[str]:
    """The names in a comma-separated ``GATEWAY_PLAIN``; an unknown one is refused at startup."""
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(names - OVERRIDES.keys())
    if unknown:
        raise ImproperlyConfigured(
            f"GATEWAY_PLAIN names unknown override(s): {', '.join(unknown)}. "
            f"Known: {', '.join(OVERRIDES)}.")
    return names


def is_plain(name: str) -> bool:
    """Whether the library's own path runs instead of the gateway's override ``name``."""
    return name in settings.GATEWAY_PLAIN
