from django import forms
from django.contrib import admin

from apps.identities.channel_scope import UsableAgentsOnly, UsableChannelsOnly, UsableToolsOnly
from apps.identities.guarded_admin import ObjectPermissionsAdmin, client_ip
from apps.identities.privileges import refused
from apps.identities.scoped_pickers import UsablePickers
from apps.logs.services import audit

from .models import Agent, AgentFallback, LLMModel, Provider, Tool, ToolCall


class ProviderForm(forms.ModelForm):
    """The API key is write-only: it can be set or cleared, never read back."""

    base_url = forms.URLField(
        max_length=300, required=False, assume_scheme="https",
        help_text="Empty: the preset's URL.",
    )
    new_api_key = forms.CharField(
        label="API key", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted; leave empty to keep the current one. Never shown again.",
    )
    clear_api_key = forms.BooleanField(
        label="Remove the stored API key", required=False,
        help_text="The key then comes from the environment variable named above.",
    )

    class Meta:
        model = Provider
        fields = ("slug", "name", "preset", "base_url", "api_key_env", "timeout_seconds", "enabled")

    # Set by ProviderAdmin.get_form.
    request = None
    actor = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sends_to = self._destination() if self.instance.pk else None

    def _destination(self) -> tuple[str, str]:
        return self.instance.base_url, self.instance.api_key_env

    def _post_clean(self):
        super()._post_clean()  # the instance now holds the new settings, a preset's filled in
        if self.errors or self.actor is None or self.actor.is_superuser:
            return
        # A key already held (stored, or in the environment) goes to the provider's URL: whoever
        # else may edit providers may point their own key somewhere, never one they were not given.
        typed = bool(self.cleaned_data.get("new_api_key"))
        if self.cleaned_data.get("clear_api_key"):
            why = "Only a superuser removes a provider's stored key: the environment's key would take its place."
        elif not self.instance.pk and not typed:
            why = "Type the provider's API key: only a superuser adds a provider using a key from the environment."
        elif self.instance.pk and self._destination() != self._sends_to and not typed:
            why = ("Type the API key for the new URL or key variable: only a superuser sends a key already "
                   "held to another endpoint.")
        else:
            return
        refused(self.request, what="send a provider key it was not given", target=self.instance if
                self.instance.pk else None, slug=self.instance.slug)
        self.add_error(None, why)

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("new_api_key"):
            provider.set_api_key(self.cleaned_data["new_api_key"])
        elif self.cleaned_data.get("clear_api_key"):
            provider.set_api_key("")
        if commit:
            provider.save()
        return provider


def provider_describe(provider: Provider) -> dict:
    """What an audit event records about a provider: its settings, whether a key is stored (never the key)."""
    return {"slug": provider.slug, "name": provider.name, "preset": provider.preset, "base_url": provider.base_url,
            "api_key_env": provider.api_key_env, "key_stored": provider.has_stored_key,
            "timeout_seconds": provider.timeout_seconds, "enabled": provider.enabled}


@admin.register(Provider)
class ProviderAdmin(UsablePickers, admin.ModelAdmin):
    """Every create, change and delete is audited (``provider.*``): the base URL decides where the
    key goes, so who pointed it where must be on record. Keys are never in the audit row."""

    form = ProviderForm
    list_display = ("slug", "name", "preset", "base_url", "api_key_env", "key_stored", "timeout_seconds", "enabled")
    list_filter = ("enabled", "preset")
    search_fields = ("slug", "name", "base_url")
    fields = ("slug", "name", "preset", "base_url", "api_key_env", "key_stored", "new_api_key", "clear_api_key",
              "timeout_seconds", "enabled")
    readonly_fields = ("key_stored",)

    @admin.display(boolean=True, description="key stored")
    def key_stored(self, obj) -> bool:
        return bool(obj and obj.has_stored_key)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type(form.__name__, (form,), {"request": request, "actor": request.user})

    def save_model(self, request, obj, form, change):
        before = provider_describe(Provider.objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)
        key = ("set" if form.cleaned_data.get("new_api_key") else
               "cleared" if form.cleaned_data.get("clear_api_key") else "unchanged")
        after = provider_describe(obj)
        if not change:
            audit(action="provider.created", actor=request.user, target=obj, after=after, api_key=key,
                  client_ip=client_ip(request))
        elif before != after or key != "unchanged":
            audit(action="provider.changed", actor=request.user, target=obj, before=before, after=after,
                  api_key=key, client_ip=client_ip(request))

    def delete_model(self, request, obj):
        # Written first (the admin's delete runs in one transaction): the row still has its pk.
        audit(action="provider.deleted", actor=request.user, target=obj, before=provider_describe(obj),
              client_ip=client_ip(request))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for provider in queryset:
            self.delete_model(request, provider)


@admin.register(LLMModel)
class LLMModelAdmin(UsablePickers, admin.ModelAdmin):
    list_display = ("name", "provider", "input_price_per_1k", "output_price_per_1k", "context_window")
    list_filter = ("provider",)
    search_fields = ("name",)
    list_select_related = ("provider",)


class AgentFallbackInline(admin.TabularInline):
    """The fallback chain: tried in position order when the agent's model keeps failing."""

    model = AgentFallback
    extra = 0
    ordering = ("position",)
    autocomplete_fields = ("model",)


@admin.register(Agent)
class AgentAdmin(UsablePickers, UsableAgentsOnly, ObjectPermissionsAdmin):
    """Who may use an agent: its visibility (by role), or per user/group via Object permissions.
    Staff find only the agents they may use."""

    list_display = ("slug", "name", "model", "visibility", "max_tokens", "temperature", "enabled")
    # Providers of the agents she finds, not every provider.
    list_filter = ("visibility", "enabled", ("model__provider", admin.RelatedOnlyFieldListFilter))
    search_fields = ("slug", "name", "system_prompt")
    list_select_related = ("model__provider",)
    filter_horizontal = ("tools",)
    inlines = [AgentFallbackInline]


@admin.register(Tool)
class ToolAdmin(UsablePickers, UsableToolsOnly, ObjectPermissionsAdmin):
    """Who may use a tool: its visibility (by role), or per user/group via Object permissions."""

    list_display = ("slug", "name", "visibility", "enabled")
    list_filter = ("visibility", "enabled")
    search_fields = ("slug", "name", "description")
    readonly_fields = ("slug", "parameters")

    def has_add_permission(self, request) -> bool:
        return False  # rows come from the tool registry (code), see apps/agents/tools


@admin.register(ToolCall)
class ToolCallAdmin(UsablePickers, UsableChannelsOnly, admin.ModelAdmin):
    channel_path = "message__channel_id"
    list_display = ("created_at", "name", "status", "user", "step", "latency_ms")
    list_filter = ("status", "name")
    search_fields = ("name", "user__username", "message__id")
    list_select_related = ("user",)
    readonly_fields = [f.name for f in ToolCall._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
