"""Plain helpers shared by the traffic and spend tests."""
from __future__ import annotations

from channels.testing import WebsocketCommunicator

from apps.connectors.visitors import visitor_token_issue


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


async def open_chat(channel, *, client=("127.0.0.1", 50000), headers=()):
    """A web chat socket as a visitor; returns the connected communicator."""
    from asgiref.sync import sync_to_async

    from gateway_project.asgi import application

    token = await sync_to_async(visitor_token_issue)(channel)
    communicator = WebsocketCommunicator(application, f"/ws/chat/{channel.slug}/?visitor={token}",
                                         headers=list(headers))
    communicator.scope["client"] = client
    connected, _ = await communicator.connect()
    assert connected
    return communicator
