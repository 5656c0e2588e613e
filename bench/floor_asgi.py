"""The floor bench's other bare server: a Channels ``AsyncHttpConsumer`` routed by Channels alone,
without Django's request handler. The same endpoint as bench/floor_urls.py."""
import json

import django

django.setup()

from channels.generic.http import AsyncHttpConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class Echo(AsyncHttpConsumer):
    channel_layer_alias = "none"  # a plain HTTP endpoint: no channel layer

    async def handle(self, body):
        data = json.loads(body) if body else {}
        await self.send_response(202 if data else 200, json.dumps({"status": "accepted", "size": len(data)}).encode(),
                                 headers=[(b"content-type", b"application/json")])


application = ProtocolTypeRouter({"http": URLRouter([path("healthz", Echo.as_asgi()),
                                                     path("floor/echo", Echo.as_asgi())])})
