from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.connectors"

    def ready(self) -> None:
        from gateway_project.config_cache import watch

        from .models import Channel

        watch(Channel)
