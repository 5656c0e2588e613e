from django.apps import AppConfig


class QuotasConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.quotas"
    verbose_name = "Traffic and spend control"

    def ready(self):
        from gateway_project.config_cache import watch

        from .models import IpRule, QuotaPolicy

        watch(IpRule, QuotaPolicy)
