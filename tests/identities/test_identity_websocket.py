"""The web chat socket: a logged-in session is that user, visitors are customers; refusals over the wire."""
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.agents.models import Agent, Visibility
from apps.connectors.visitors import visitor_token_issue
from apps.conversations.models import Message
from apps.identities.access import AGENT_REFUSED
from apps.logs.models import AuditEvent
from gateway_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def queue_agent_runs_without_running_them(settings):
    """These tests stop at the ack: accepted messages go to the Celery broker, where no worker
    picks them up, instead of an in-process run that would outlive the test's database."""
    settings.GATEWAY_AGENT_DISPATCH = "celery"


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def open_socket(channel, *, user=None, visitor_token=None):
    path = f"/ws/chat/{channel.slug}/"
    if visitor_token:
        path += f"?visitor={visitor_token}"
    headers = [(b"cookie", await sync_to_async(session_cookie)(user))] if user else []
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def send_message(communicator, text="hello", client_id="c-1"):
    await communicator.send_json_to({"type": "message", "message": text, "client_id": client_id})
    return await communicator.receive_json_from(timeout=5)


@pytest.fixture
def internal_agent(llm_model):
    return Agent.objects.create(slug="internal-helper", name="Internal helper", model=llm_model,
                                visibility=Visibility.INTERNAL)


async def test_blocked_session_user_is_refused_at_connect(webchat_channel, employee):
    employee.blocked_at = timezone.now()
    await sync_to_async(employee.save)()
    communicator = await open_socket(webchat_channel, user=employee)
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["code"] == "blocked"
    assert (await communicator.receive_output(timeout=5))["code"] == 4403
    assert await sync_to_async(AuditEvent.objects.filter(action="user.refused", actor=employee).exists)()


async def test_blocked_visitor_is_refused_at_connect(webchat_channel):
    token = await sync_to_async(visitor_token_issue)(webchat_channel)
    first = await open_socket(webchat_channel, visitor_token=token)
    ack = await send_message(first)
    assert ack["type"] == "ack"
    await first.disconnect()
    message = await sync_to_async(Message.objects.select_related("sender").get)(pk=ack["message_id"])
    visitor = message.sender
    assert visitor.is_visitor and await sync_to_async(lambda: visitor.role)() == "customer"
    visitor.blocked_at = timezone.now()
    await sync_to_async(visitor.save)()
    again = await open_socket(webchat_channel, visitor_token=token)
    frame = await again.receive_json_from(timeout=5)
    assert frame["code"] == "blocked"


async def test_visitor_on_an_internal_chat_is_refused_at_connect(webchat_channel):
    webchat_channel.visibility = Visibility.INTERNAL
    await sync_to_async(webchat_channel.save)()
    token = await sync_to_async(visitor_token_issue)(webchat_channel)
    communicator = await open_socket(webchat_channel, visitor_token=token)
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["code"] == "forbidden"
    assert await sync_to_async(AuditEvent.objects.filter(action="channel.refused").exists)()


async def test_customer_session_asking_an_internal_agent_gets_an_error_frame(webchat_channel, customer,
                                                                             internal_agent):
    webchat_channel.default_agent = internal_agent
    await sync_to_async(webchat_channel.save)()
    communicator = await open_socket(webchat_channel, user=customer)
    frame = await send_message(communicator, client_id="c-9")
    assert frame == {"type": "error", "code": "forbidden", "client_id": "c-9",
                     "message": AGENT_REFUSED}
    assert not await sync_to_async(Message.objects.exists)()
    event = await sync_to_async(AuditEvent.objects.get)(action="agent.refused")
    assert event.actor_id == customer.pk
    await communicator.disconnect()


async def test_employee_session_is_that_employee_and_reaches_the_internal_agent(webchat_channel, employee,
                                                                                internal_agent):
    webchat_channel.default_agent = internal_agent
    await sync_to_async(webchat_channel.save)()
    communicator = await open_socket(webchat_channel, user=employee)
    ack = await send_message(communicator)
    assert ack["type"] == "ack"
    message = await sync_to_async(Message.objects.get)(pk=ack["message_id"])
    assert message.sender_id == employee.pk
    await communicator.disconnect()


async def test_customer_granted_the_agent_is_let_through(webchat_channel, customer, internal_agent):
    webchat_channel.default_agent = internal_agent
    await sync_to_async(webchat_channel.save)()
    await sync_to_async(assign_perm)("agents.use_agent", customer, internal_agent)
    communicator = await open_socket(webchat_channel, user=customer)
    assert (await send_message(communicator))["type"] == "ack"
    await communicator.disconnect()
