from django import forms
from django.contrib import admin

from apps.core.client_ip import client_ip_for_request
from apps.identities.channel_scope import UsableChannelsOnly
from apps.identities.guarded_admin import ObjectPermissionsAdmin
from apps.identities.privileges import refused
from apps.identities.scoped_pickers import UsablePickers
from apps.logs.services import audit

from .base import ConfigError
from .models import Channel
from .registry import connector_class

# Every secret any kind uses. Write-only: the form never shows a stored value; leaving a field
# blank keeps what is stored, ticking "clear" removes it.
SECRET_FIELDS = {
    "signing_secret": "Slack signing secret",
    "bot_token": "Slack bot token (xoxb-...)",
    "token": "WeCom / WeCom AI bot callback Token",
    "encoding_aes_key": "WeCom EncodingAESKey (43 characters)",
    "secret": "WeCom app Secret / CRM shared secret / Zendesk signing secret",
    "webhook_key": "WeCom group robot webhook key",
    "app_secret": "Feishu App Secret / DingTalk AppSecret",
    "verification_token": "Feishu Verification Token",
    "encrypt_key": "Feishu Encrypt Key",
    "client_secret": "HubSpot app client secret",
}


def secret_field(name: str) -> forms.CharField:
    return forms.CharField(
        label=SECRET_FIELDS[name], required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )


class ChannelAdminForm(forms.ModelForm):
    signing_secret = secret_field("signing_secret")
    bot_token = secret_field("bot_token")
    token = secret_field("token")
    encoding_aes_key = secret_field("encoding_aes_key")
    secret = secret_field("secret")
    webhook_key = secret_field("webhook_key")
    app_secret = secret_field("app_secret")
    verification_token = secret_field("verification_token")
    encrypt_key = secret_field("encrypt_key")
    client_secret = secret_field("client_secret")
    clear_secrets = forms.BooleanField(required=False, help_text="Remove every stored secret of this channel.")

    class Meta:
        model = Channel
        fields = ("name", "slug", "kind", "enabled", "default_agent", "config", "allow_visitors", "allowed_origins",
                  "visibility", "unknown_senders", "refusal_message")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = self.instance.secrets if self.instance.pk else {}
        for name in SECRET_FIELDS:
            self.fields[name].help_text = "Stored (hidden); type to replace." if name in stored else "Not set."

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind")
        if not kind:
            return cleaned
        stored = dict(self.instance.secrets if self.instance.pk else {})
        secrets = {} if cleaned.get("clear_secrets") else dict(stored)
        secrets.update({name: cleaned[name] for name in SECRET_FIELDS if cleaned.get(name)})
        self._new_secrets = secrets
        self.secrets_changed = {
            "set": sorted(n for n in secrets if n not in stored),
            "replaced": sorted(n for n in secrets if n in stored and secrets[n] != stored[n]),
            "cleared": sorted(n for n in stored if n not in secrets),
        }
        if self.instance.pk and not self.actor.is_superuser and (
                self.secrets_changed["replaced"] or self.secrets_changed["cleared"] or kind != self.instance.kind):
            # Whoever holds a channel's secret can sign its platform's events as anyone on it, a
            # superuser's identity included: only a superuser replaces one, or the kind it is for.
            refused(self.request, what="replace a channel's secrets or kind", target=self.instance)
            raise forms.ValidationError("Only a superuser replaces or clears a channel's stored secrets, or "
                                        "changes its kind: whoever holds them speaks as anyone on it.")
        if not isinstance(cleaned.get("config"), dict | None):
            return cleaned  # Channel.clean says what is wrong
        if cleaned.get("enabled", True):
            try:
                connector_class(kind).parse_config(cleaned.get("config") or {}, secrets)
            except ConfigError as exc:
                raise forms.ValidationError(f"{kind} channel: {exc}") from exc
        return cleaned

    def save(self, commit=True):
        channel = super().save(commit=False)
        channel.secrets_ciphertext = ""
        channel.set_secrets(**self._new_secrets)
        if commit:
            channel.save()
            self.save_m2m()
        return channel


@admin.register(Channel)
class ChannelAdmin(UsablePickers, UsableChannelsOnly, ObjectPermissionsAdmin):
    """Who may talk on a channel: its visibility and unknown-sender policy, or per user/group via
    Object permissions (``use_channel``). Staff find only the channels they may use."""

    channel_path = "pk"  # the row is the channel
    form = ChannelAdminForm
    list_display = ("slug", "name", "kind", "enabled", "visibility", "unknown_senders", "default_agent",
                    "allow_visitors", "created_at")
    list_filter = ("kind", "enabled", "visibility", "unknown_senders")
    search_fields = ("slug", "name")
    list_select_related = ("default_agent",)
    prepopulated_fields = {"slug": ("name",)}
    fieldsets = (
        (None, {"fields": ("name", "slug", "kind", "enabled", "default_agent", "config")}),
        ("Who may talk", {"fields": ("visibility", "unknown_senders", "refusal_message")}),
        ("Secrets (write-only, encrypted at rest)", {"fields": (*SECRET_FIELDS, "clear_secrets")}),
        ("Web chat", {"fields": ("allow_visitors", "allowed_origins"), "classes": ("collapse",)}),
    )

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type(form.__name__, (form,), {"request": request, "actor": request.user})

    # Audited as providers are: a channel's settings decide where its talk goes (a CRM callback URL),
    # its secrets whose events it believes (named, never their values).
    def save_model(self, request, obj, form, change):
        before = Channel.objects.get(pk=obj.pk).describe() if change else None
        super().save_model(request, obj, form, change)
        after = obj.describe()
        secrets = {k: v for k, v in form.secrets_changed.items() if v}
        if before != after or secrets:
            audit(action=f"channel.{'changed' if change else 'created'}", actor=request.user, target=obj,
                  before=before, after=after, secrets=secrets, client_ip=client_ip_for_request(request))

    def delete_model(self, request, obj):
        audit(action="channel.deleted", actor=request.user, target=obj, before=obj.describe(),
              client_ip=client_ip_for_request(request))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for channel in queryset:
            self.delete_model(request, channel)
