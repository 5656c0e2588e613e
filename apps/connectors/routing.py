from django.urls import path, re_path

from apps.routing.console_consumer import InboxConsumer

from .consumers import ChatConsumer, NoSuchSocket

websocket_urlpatterns = [
    path("ws/chat/<slug:slug>/", ChatConsumer.as_asgi()),
    path("ws/console/", InboxConsumer.as_asgi()),  # the staff handoff inbox
    re_path(r"", NoSuchSocket.as_asgi()),  # last: any other path is refused, not a 500
]
