from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.connectors"

    def ready(self) -> None:
        from apps.agents.hooks import register_channel_lookup
        from gateway_project.config_cache import watch

        from .models import Channel, channel_by_id

        watch(Channel)
        register_channel_lookup(channel_by_id)  # the agent run finds its channel (apps/agents/hooks.py)
