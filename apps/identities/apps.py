import functools

from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, pre_delete


class IdentitiesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.identities"

    def ready(self) -> None:
        from django.contrib.auth.models import Group

        from gateway_project.config_cache import watch

        from .models import ApiKey, ChannelIdentity, User

        # What is kept per user is their groups and global permissions (permissions.user_access),
        # the user row itself (behind an API key or a channel identity): a user's save matters only
        # when it can change what has_perm answers or whether the user may come in at all; an
        # identity's only when it moves to another user (a new one was not kept: nothing to drop).
        watch(User, Group, ApiKey, ChannelIdentity,
              fields={User: {"is_active", "is_superuser", "blocked_at"}, ChannelIdentity: {"user"}}, m2m_through=[
            User.groups.through, User.user_permissions.through, Group.permissions.through,
            ApiKey.channels.through, ApiKey.agents.through,
        ])
        for scope, model in (("agents", "agents.Agent"), ("channels", "connectors.Channel")):
            pre_delete.connect(functools.partial(_note_keys_scoped_to, scope), sender=model, weak=False,
                               dispatch_uid=f"note-keys-scoped-to-{model}")
            post_delete.connect(functools.partial(_revoke_keys_left_unscoped, scope), sender=model, weak=False,
                                dispatch_uid=f"revoke-keys-left-unscoped-{model}")
        for through in (User.groups.through, User.user_permissions.through):
            m2m_changed.connect(_forget_access_of_instance, sender=through, weak=False,
                                dispatch_uid=f"forget-access-{through._meta.label}")


def _note_keys_scoped_to(scope: str, instance, **kwargs) -> None:
    from .services import keys_scoped_to

    instance._keys_scoped_to_it = keys_scoped_to(scope, instance)  # its scope rows are deleted with it


def _revoke_keys_left_unscoped(scope: str, instance, **kwargs) -> None:
    from .services import revoke_keys_left_unscoped

    if getattr(instance, "_keys_scoped_to_it", None):
        revoke_keys_left_unscoped(scope, instance._keys_scoped_to_it, instance)


def _forget_access_of_instance(instance, action: str, **kwargs) -> None:
    """``user.groups.add(...)``: that user object forgets what it had loaded (as on a new request)."""
    from .permissions import forget_access

    if action.startswith("post_"):
        forget_access(instance)
