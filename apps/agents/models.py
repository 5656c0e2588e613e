"""Providers (OpenAI-compatible endpoints), their models with prices, and agents."""
from __future__ import annotations

import fnmatch
import os
import re
import time
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import IntegrityError, models

from .secrets import decrypt_secret, encrypt_secret

# Presets for well-known OpenAI-compatible endpoints: (label, base URL, usual key variable).
PROVIDER_PRESETS: dict[str, tuple[str, str, str]] = {
    "openai": ("OpenAI", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    # Qwen through DashScope's OpenAI-compatible mode (mainland; international accounts use
    # https://dashscope-intl.aliyuncs.com/compatible-mode/v1).
    "qwen": ("Qwen (DashScope compatible mode)", "https://dashscope.aliyuncs.com/compatible-mode/v1",
             "DASHSCOPE_API_KEY"),
    # GLM through Zhipu's open platform (international: https://api.z.ai/api/paas/v4).
    "glm": ("GLM (Zhipu BigModel)", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY"),
}
PRESET_CHOICES = [("custom", "Custom endpoint")] + [(k, v[0]) for k, v in PROVIDER_PRESETS.items()]

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,99}$")


class ProviderKeyRefused(Exception):
    """A provider names a key variable outside GATEWAY_PROVIDER_KEY_ENV_ALLOWED: nothing is sent."""


def key_env_allowed(name: str) -> bool:
    """Whether a provider may read its API key from the environment variable ``name``.

    Only names matching one of GATEWAY_PROVIDER_KEY_ENV_ALLOWED (glob patterns, default ``*_API_KEY``)
    are: otherwise whoever may edit a provider could send SECRET_KEY or DATABASE_URL to a host of
    their choosing as its "API key".
    """
    return bool(_ENV_NAME.match(name)) and any(
        fnmatch.fnmatchcase(name, pattern) for pattern in settings.GATEWAY_PROVIDER_KEY_ENV_ALLOWED)


def validate_key_env(name: str) -> None:
    from django.core.exceptions import ValidationError

    if name and not key_env_allowed(name):
        raise ValidationError(
            "Not an API-key variable: the name must match %(patterns)s (GATEWAY_PROVIDER_KEY_ENV_ALLOWED).",
            params={"patterns": ", ".join(settings.GATEWAY_PROVIDER_KEY_ENV_ALLOWED)}, code="key_env_refused")


class Provider(models.Model):
    """An OpenAI-compatible endpoint (OpenAI, Qwen via DashScope, GLM via Zhipu, fake_llm, ...)."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    preset = models.CharField(
        max_length=16, choices=PRESET_CHOICES, default="custom",
        help_text="Fills in the base URL and key variable of a known provider when they are left empty.",
    )
    base_url = models.URLField(max_length=300, blank=True)
    api_key_env = models.CharField(
        max_length=100, blank=True, validators=[validate_key_env],
        help_text="Name of the environment variable holding the API key; it must match "
        "GATEWAY_PROVIDER_KEY_ENV_ALLOWED (default *_API_KEY).",
    )
    api_key_encrypted = models.TextField(
        blank=True, editable=False,
        help_text="The API key, Fernet-encrypted (set in the admin; write-only). Wins over api_key_env.",
    )
    timeout_seconds = models.FloatField(default=60.0)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        preset = PROVIDER_PRESETS.get(self.preset)
        if preset is not None:
            self.base_url = self.base_url or preset[1]
            self.api_key_env = self.api_key_env or preset[2]
        validate_key_env(self.api_key_env)  # a preset's name too, should the allow-list leave it out
        if not self.base_url:
            raise ValidationError({"base_url": "A base URL is needed (or pick a preset)."})

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        # When this copy was read: of two configurations of one provider, the one read later is
        # its current one (llm.pools_for); a run may still hold a copy from before a change.
        instance._loaded_at = time.monotonic()
        return instance

    def set_api_key(self, raw_key: str) -> None:
        """Store ``raw_key`` encrypted ('' clears it). The caller saves the row."""
        self.api_key_encrypted = encrypt_secret(raw_key) if raw_key else ""

    @property
    def has_stored_key(self) -> bool:
        return bool(self.api_key_encrypted)

    def api_key(self) -> str:
        """The stored (encrypted) key, else the one in the named environment variable
        (OPENAI_API_KEY when none is named).

        A name outside GATEWAY_PROVIDER_KEY_ENV_ALLOWED raises ProviderKeyRefused: a row saved before
        the rule, or written straight into the database, still sends no other secret. The OPENAI_API_KEY
        setting stands in only for OPENAI_API_KEY itself, never for another provider's unset variable.
        Local stand-ins accept any value, and the client insists on one, hence the placeholder.
        """
        if self.api_key_encrypted:
            return decrypt_secret(self.api_key_encrypted)
        name = self.api_key_env or "OPENAI_API_KEY"
        if not key_env_allowed(name):
            raise ProviderKeyRefused(
                f"Provider {self.slug!r} names the key variable {name!r}, which GATEWAY_PROVIDER_KEY_ENV_ALLOWED "
                "does not allow; nothing was sent.")
        fallback = settings.OPENAI_API_KEY if name == "OPENAI_API_KEY" else ""
        return os.environ.get(name) or fallback or "no-key-configured"


class LLMModel(models.Model):
    """A model served by a provider, with its price per 1K tokens (in the billing currency)."""

    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    name = models.CharField(max_length=100, help_text="The model id sent to the provider.")
    # Never negative: a negative price would turn every cost budget into credit.
    input_price_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0),
                                             validators=[MinValueValidator(0)])
    output_price_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0),
                                              validators=[MinValueValidator(0)])
    context_window = models.PositiveIntegerField(default=8192)

    class Meta:
        verbose_name = "model"
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="model_unique_per_provider"),
            models.CheckConstraint(condition=models.Q(input_price_per_1k__gte=0, output_price_per_1k__gte=0),
                                   name="model_prices_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} @ {self.provider.slug}"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return (
            self.input_price_per_1k * prompt_tokens + self.output_price_per_1k * completion_tokens
        ) / 1000


class Visibility(models.TextChoices):
    PUBLIC = "public", "Public (customers)"
    INTERNAL = "internal", "Internal (employees)"
    ADMIN = "admin", "Admin only"


class Agent(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True)
    model = models.ForeignKey(LLMModel, on_delete=models.PROTECT, related_name="agents")
    temperature = models.FloatField(default=0.7)
    max_tokens = models.PositiveIntegerField(default=512)
    history_messages = models.PositiveIntegerField(
        default=20, help_text="How many earlier messages of the conversation the model sees."
    )
    history_tokens = models.PositiveIntegerField(
        default=0, help_text="Also cap the earlier messages at about this many tokens (0: no cap)."
    )
    tools = models.ManyToManyField(
        "Tool", blank=True, related_name="agents", help_text="The tools this agent's models may call."
    )
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        # Granted per agent with django-guardian: one user or group may use one agent beyond its role.
        permissions = [("use_agent", "Can use this agent")]

    def __str__(self) -> str:
        return self.name


def agent_by_slug(slug: str) -> Agent | None:
    """The enabled agent named ``slug`` (with its model and provider), kept per process."""
    from gateway_project.config_cache import cached

    return cached("agent_by_slug", slug, lambda: (
        Agent.objects.select_related("model__provider").filter(slug=slug, enabled=True).first()))


def agent_by_id(pk) -> Agent | None:
    """The agent with primary key ``pk``, enabled or not (a message keeps the agent it was routed
    to), with its model and provider; kept per process, a copy per call."""
    from gateway_project.config_cache import cached_copy

    return cached_copy("agent_by_id", pk, lambda: Agent.objects.select_related("model__provider").filter(pk=pk).first())


def written_without_a_deleted_agent(row, write):
    """``write()`` a run's ``row`` (its reply, its call's log row); if that fails because its agent
    was deleted while the model answered (asked fresh, after the failure), write it again without
    the agent. Any other IntegrityError is raised."""
    try:
        return write()
    except IntegrityError:
        if row.agent_id is None or Agent.objects.filter(pk=row.agent_id).exists():
            raise
    row.agent = None
    return write()


def agent_tools(agent: Agent) -> list[Tool]:
    """The agent's enabled tools, kept per process."""
    from gateway_project.config_cache import cached

    return cached("agent_tools", agent.pk, lambda: list(agent.tools.filter(enabled=True)))


def agent_fallback_models(agent: Agent) -> list[LLMModel]:
    """The agent's fallback models in order (with their providers), kept per process."""
    from gateway_project.config_cache import cached

    return cached("agent_fallbacks", agent.pk, lambda: [
        f.model for f in agent.fallbacks.select_related("model__provider")])


class AgentFallback(models.Model):
    """One step of an agent's fallback chain: tried in ``position`` order after the main model."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="fallbacks")
    model = models.ForeignKey(LLMModel, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["agent", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "model"], name="fallback_model_once_per_agent")
        ]

    def __str__(self) -> str:
        return f"{self.agent.slug} #{self.position}: {self.model}"


class Tool(models.Model):
    """A Python tool the models may call (function calling). The code lives in the tool registry
    (apps/agents/tools); this row is what staff manage: who may use it and whether it is on."""

    slug = models.SlugField(max_length=64, unique=True, help_text="The registry name; what the model calls.")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, help_text="What the model is told the tool does.")
    parameters = models.JSONField(default=dict, blank=True, help_text="JSON schema of the arguments.")
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.ADMIN)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["slug"]
        permissions = [("use_tool", "Can use the tool (grant per tool as an object permission)")]

    def __str__(self) -> str:
        return self.slug

    def spec(self) -> dict:
        """The OpenAI ``tools`` entry for this tool."""
        return {"type": "function", "function": {
            "name": self.slug, "description": self.description,
            "parameters": self.parameters or {"type": "object", "properties": {}},
        }}


class ToolCall(models.Model):
    """One tool call a model asked for during an agent run, and what came of it."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        REFUSED = "refused", "Refused (not permitted)"
        INVALID = "invalid", "Invalid arguments"
        UNKNOWN = "unknown", "Unknown tool"
        ERROR = "error", "Tool error"

    message = models.ForeignKey(
        "conversations.Message", null=True, on_delete=models.SET_NULL, related_name="tool_calls"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    tool = models.ForeignKey(Tool, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls")
    name = models.CharField(max_length=100, help_text="The tool name the model asked for.")
    step = models.PositiveSmallIntegerField(default=1)
    arguments = models.TextField(blank=True)
    result = models.TextField(blank=True)
    status = models.CharField(max_length=8, choices=Status.choices)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} {self.status}"
