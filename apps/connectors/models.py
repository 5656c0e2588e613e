"""A configured channel instance: one Slack workspace app, one web chat, the API, ..."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from apps.agents.models import Visibility

from .registry import KIND_CHOICES


class UnknownSenders(models.TextChoices):
    CREATE_CUSTOMER = "create_customer", "Create a customer"
    REFUSE = "refuse", "Refuse politely"


class Channel(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32, choices=KIND_CHOICES)
    enabled = models.BooleanField(default=True)
    default_agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    allow_visitors = models.BooleanField(
        default=True, help_text="Web chat: anonymous visitors may talk (as customers)."
    )
    allowed_origins = models.JSONField(
        default=list, blank=True,
        help_text="Web chat: browser origins allowed to open the websocket, e.g. "
        '["https://example.com"]. Empty: same host as the gateway only.',
    )
    config = models.JSONField(default=dict, blank=True, help_text="Kind-specific settings (no secrets).")
    secrets_ciphertext = models.TextField(
        blank=True, editable=False,
        help_text="Kind-specific secrets (signing secrets, tokens, keys), Fernet-encrypted JSON.",
    )
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC,
        help_text="Who may talk on this channel; grant single users or groups more with object permissions.",
    )
    unknown_senders = models.CharField(
        max_length=16, choices=UnknownSenders.choices, default=UnknownSenders.CREATE_CUSTOMER,
        help_text="What happens to a sender with no identity on this channel yet.",
    )
    refusal_message = models.CharField(
        max_length=500, blank=True,
        help_text="The polite reply to a refused unknown sender (a default text when empty).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        # Granted per channel with django-guardian: one user or group may use one channel beyond its role.
        permissions = [("use_channel", "Can use this channel")]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        # Read as key → value and as a list of origins on every message and socket: another shape would fail them all.
        errors = {}
        if not isinstance(self.config, dict):
            errors["config"] = "A JSON object of setting → value."
        if not (isinstance(self.allowed_origins, list) and all(isinstance(o, str) for o in self.allowed_origins)):
            errors["allowed_origins"] = 'A JSON list of origins, e.g. ["https://example.com"].'
        if errors:
            raise ValidationError(errors)

    def embeddable_from(self, origin: str) -> bool:
        """Whether a page at ``origin`` may embed its web chat: the channel's origins and
        ``WEBCHAT_ALLOWED_ORIGINS`` ("*": any)."""
        own = self.allowed_origins if isinstance(self.allowed_origins, list) else []  # a row from before clean()
        allowed = [o for o in own if isinstance(o, str)] + list(settings.WEBCHAT_ALLOWED_ORIGINS)
        return origin in allowed or "*" in allowed

    def describe(self) -> dict:
        """What decides where its talk comes from and goes (for the audit log; never the secrets)."""
        return {"kind": self.kind, "enabled": self.enabled, "visibility": self.visibility,
                "default_agent": self.default_agent_id, "config": self.config,
                "allowed_origins": self.allowed_origins, "allow_visitors": self.allow_visitors,
                "unknown_senders": self.unknown_senders, "secrets": sorted(self.secrets)}

    @property
    def secrets(self) -> dict[str, str]:
        """The decrypted secrets (never log or display them)."""
        from .secrets import secrets_decrypt

        return secrets_decrypt(self.secrets_ciphertext)

    def set_secrets(self, **values: str) -> None:
        """Store or replace secrets by name (an empty value removes one); call save() after."""
        from .secrets import secrets_encrypt

        merged = {**self.secrets, **values}
        self.secrets_ciphertext = secrets_encrypt({k: v for k, v in merged.items() if v})

    @property
    def connector(self):
        from .registry import connector_for

        return connector_for(self)


def channel_by_slug(slug: str, *, kind: str | None = None) -> Channel | None:
    """The channel named ``slug`` (of ``kind`` if given), enabled or not, with its default agent.

    Kept per process (gateway_project.config_cache); each call gets its own copy of the row.
    """
    from gateway_project.config_cache import cached_copy

    channel = cached_copy("channel", slug, lambda: _with_default_agent().filter(slug=slug).first())
    if channel is None or (kind is not None and channel.kind != kind):
        return None
    return channel


def channel_by_id(pk) -> Channel | None:
    """The channel with primary key ``pk`` (for a worker answering one of its messages), kept per
    process like channel_by_slug; each call gets its own copy of the row."""
    from gateway_project.config_cache import cached_copy

    return cached_copy("channel_by_id", pk, lambda: _with_default_agent().filter(pk=pk).first())


def _with_default_agent():
    return Channel.objects.select_related("default_agent")


class DemoSeed(models.Model):
    """The random seed of this install's demo secrets (``seed_demo``), Fernet-encrypted.

    One row, created by the first ``seed_demo``. Demo API keys, the demo staff password and demo
    channel secrets are derived from it, so re-seeding prints the same working values while no one
    can compute them from anything public (SECRET_KEY included).
    """

    seed_ciphertext = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"demo seed of {self.created_at:%Y-%m-%d}"
