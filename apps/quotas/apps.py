from django.apps import AppConfig


class QuotasConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.quotas"
    verbose_name = "Traffic and spend control"

    def ready(self):
        from django.db.models.signals import post_delete, post_save

        from .iprules import invalidate_ip_rules
        from .models import IpRule, QuotaPolicy
        from .policies import invalidate_policies

        # Other processes pick edits up within their cache time; this one at once.
        for signal in (post_save, post_delete):
            signal.connect(lambda **_: invalidate_policies(), sender=QuotaPolicy, weak=False)
            signal.connect(lambda **_: invalidate_ip_rules(), sender=IpRule, weak=False)
