from django.apps import AppConfig


class RoutingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.routing"

    def ready(self) -> None:
        from apps.agents.hooks import register_handoff
        from gateway_project.config_cache import watch

        from .models import Route
        from .services import RUN_HANDOFF

        watch(Route)
        register_handoff(RUN_HANDOFF)  # the agent run's handoff hold (apps/agents/hooks.py)
