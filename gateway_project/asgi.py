"""ASGI entry point: HTTP (Django) and websockets (Channels) in one application."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django_asgi_app = get_asgi_application()

import asyncio  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from apps.agents.recovery import start_embedded_recovery  # noqa: E402
from apps.connectors.routing import websocket_urlpatterns  # noqa: E402
from apps.conversations.realtime import remember_server_loop  # noqa: E402
from apps.logs.periodic import start_embedded_periodic  # noqa: E402

router = ProtocolTypeRouter({
    "http": ASGIStaticFilesHandler(django_asgi_app),
    # Origins are checked per channel by the consumer (see connectors.consumers.origin_allowed).
    "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
})


async def application(scope, receive, send):
    # Embedded default: workers publish to the in-memory channel layer on this loop.
    remember_server_loop(asyncio.get_running_loop())
    start_embedded_periodic()  # embedded default: flush request logs, rebuild rollups (no beat)
    start_embedded_recovery()  # embedded default: answer what a restart interrupted (no beat)
    await router(scope, receive, send)
