from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AgentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.agents"

    def ready(self) -> None:
        from gateway_project.config_cache import watch

        from .models import Agent, AgentFallback, LLMModel, Provider, Tool

        post_migrate.connect(_sync_tools, sender=self)
        watch(Provider, LLMModel, Agent, AgentFallback, Tool, m2m_through=[Agent.tools.through])


def _sync_tools(sender, using="default", **kwargs) -> None:
    from .services import tool_sync

    tool_sync()
