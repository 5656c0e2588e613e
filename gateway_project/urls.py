from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.connectors.embed import widget_session
from apps.connectors.views import chat_page
from apps.connectors.webhooks import channel_webhook
from apps.conversations.apis import ConversationMessagesApi, MessageCreateApi
from apps.conversations.openai_face import ChatCompletionsApi, ModelDetailApi, ModelsApi
from apps.logs.health import healthz, readyz
from apps.logs.metrics import metrics_view
from apps.quotas.apis import UsageApi

from .errors import json_400, json_404, json_500

urlpatterns = [
    path("api/v1/messages", MessageCreateApi.as_view(), name="api-messages"),
    path(
        "api/v1/conversations/<uuid:conversation_id>/messages",
        ConversationMessagesApi.as_view(),
        name="api-conversation-messages",
    ),
    path("v1/chat/completions", ChatCompletionsApi.as_view(), name="openai-chat-completions"),
    path("v1/models", ModelsApi.as_view(), name="openai-models"),
    path("v1/models/<path:model>", ModelDetailApi.as_view(), name="openai-model"),  # "org/model" too
    path("api/v1/channels/<slug:slug>/webhook", channel_webhook, name="channel-webhook"),
    path("api/v1/usage", UsageApi.as_view(), name="api-usage"),
    path("api/v1/schema", SpectacularAPIView.as_view(), name="api-schema"),
    # GET only: the HTML renderer has no template for an OPTIONS metadata answer (a 500).
    path("api/v1/docs", SpectacularSwaggerView.as_view(url_name="api-schema", http_method_names=["get", "head"]),
         name="api-docs"),
    path("chat/<slug:slug>/", chat_page, name="chat-page"),
    path("chat/<slug:slug>/widget-session", widget_session, name="chat-widget-session"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("dashboard/", include("apps.dashboards.urls")),
    path("console/", include("apps.routing.console_urls")),
    path("admin/", admin.site.urls),
]

handler400 = json_400
handler404 = json_404
handler500 = json_500
