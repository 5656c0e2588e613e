from django.apps import AppConfig


class LogsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.logs"

    def ready(self) -> None:
        # A worker serves its metrics when ready (celery's worker_ready, connected on import).
        from . import metrics  # noqa: F401
