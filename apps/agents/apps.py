from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class AgentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.agents"

    def ready(self) -> None:
        from apps.logs.metrics import SCRAPE_REGISTRY
        from gateway_project.config_cache import watch

        from . import tasks  # noqa: F401  (the Celery tasks and their in-process twins, found by name)
        from .dispatch import QueueDepthCollector
        from .models import Agent, AgentFallback, LLMModel, Provider, Tool

        post_migrate.connect(_sync_tools, sender=self)
        checks.register(_sqlite_returns_rows, checks.Tags.database)
        SCRAPE_REGISTRY.register(QueueDepthCollector())
        watch(Provider, LLMModel, Agent, AgentFallback, Tool, m2m_through=[Agent.tools.through])


def _sqlite_returns_rows(app_configs=None, databases=None, **kwargs) -> list:
    """The claim is one UPDATE … RETURNING (apps/agents/claims.py): SQLite 3.35 or newer."""
    from django.db import connections

    errors = []
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor == "sqlite" and not connection.features.can_return_columns_from_insert:
            errors.append(checks.Error(
                f"SQLite {connection.Database.sqlite_version} is too old: the gateway needs 3.35 or newer "
                "(UPDATE … RETURNING).", id="agents.E001"))
    return errors


def _sync_tools(sender, using="default", **kwargs) -> None:
    from .services import tool_sync

    tool_sync()
