from django.apps import AppConfig


class RoutingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.routing"

    def ready(self) -> None:
        from gateway_project.config_cache import watch

        from .models import Route

        watch(Route)

        from django.db.models.signals import post_save

        from apps.conversations.models import Message

        from .services import announce_held_message

        # A message that arrives while a human has the conversation waits behind the held one (the
        # agent run never claims it), so the inbox hears of it when it is stored.
        post_save.connect(announce_held_message, sender=Message, dispatch_uid="routing.announce_held_message")
