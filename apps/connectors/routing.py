from django.urls import path

from apps.routing.console_consumer import InboxConsumer

from .consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/<slug:slug>/", ChatConsumer.as_asgi()),
    path("ws/console/", InboxConsumer.as_asgi()),  # the staff handoff inbox
]
