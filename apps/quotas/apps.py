from django.apps import AppConfig
from django.conf import settings
from django.core import checks

RATE_SETTINGS = ("GATEWAY_USER_RATE", "GATEWAY_API_KEY_RATE", "GATEWAY_CHANNEL_RATE", "GATEWAY_IP_RATE",
                 "WEBCHAT_VISITORS_PER_IP_RATE", "WEBCHAT_CONNECTS_PER_IP_RATE")


class QuotasConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.quotas"
    verbose_name = "Traffic and spend control"

    def ready(self):
        from gateway_project.config_cache import watch

        from .models import IpRule, QuotaPolicy

        watch(IpRule, QuotaPolicy)
        checks.register(_rates_parse)


def _rates_parse(app_configs=None, **kwargs):
    """A rate setting that does not parse would fail every request it applies to: refuse to start."""
    from .models import parse_rate

    errors = []
    for name in RATE_SETTINGS:
        if value := getattr(settings, name, ""):
            try:
                parse_rate(value)
            except ValueError as exc:
                errors.append(checks.Error(f"{name}: {exc}", id="quotas.E001"))
    return errors
