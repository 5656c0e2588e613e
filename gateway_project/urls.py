from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.connectors.views import chat_page
from apps.connectors.webhooks import channel_webhook
from apps.conversations.apis import ConversationMessagesApi, MessageCreateApi
from apps.logs.health import healthz, readyz
from apps.quotas.apis import UsageApi

from .errors import json_404, json_500

urlpatterns = [
    path("api/v1/messages", MessageCreateApi.as_view(), name="api-messages"),
    path(
        "api/v1/conversations/<uuid:conversation_id>/messages",
        ConversationMessagesApi.as_view(),
        name="api-conversation-messages",
    ),
    path("api/v1/channels/<slug:slug>/webhook", channel_webhook, name="channel-webhook"),
    path("api/v1/usage", UsageApi.as_view(), name="api-usage"),
    path("api/v1/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("chat/<slug:slug>/", chat_page, name="chat-page"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
]

handler404 = json_404
handler500 = json_500
