from django.apps import AppConfig


class RoutingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.routing"

    def ready(self) -> None:
        from gateway_project.config_cache import watch

        from .models import Route

        watch(Route)
