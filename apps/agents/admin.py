from django.contrib import admin

from .models import Agent, LLMModel, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "base_url", "api_key_env", "timeout_seconds", "enabled")
    list_filter = ("enabled",)
    search_fields = ("slug", "name", "base_url")


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    list_display = ("name", "provider", "input_price_per_1k", "output_price_per_1k", "context_window")
    list_filter = ("provider",)
    search_fields = ("name",)
    list_select_related = ("provider",)


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "model", "visibility", "max_tokens", "temperature", "enabled")
    list_filter = ("visibility", "enabled", "model__provider")
    search_fields = ("slug", "name", "system_prompt")
    list_select_related = ("model__provider",)
