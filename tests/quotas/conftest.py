"""Helpers for the traffic and spend tests: API clients per user, policies, a web chat socket."""
from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from apps.connectors.visitors import visitor_token_issue
from apps.identities.models import ApiKey
from apps.identities.roles import Role
from apps.quotas.ledger import LocalLedger, RedisLedger
from apps.quotas.models import QuotaPolicy


@pytest.fixture
def key_client():
    """An APIClient authenticated with a new key of ``user``; returns (client, ApiKey row)."""

    def make(user, *, remote_addr="127.0.0.1", **extra):
        key, raw = ApiKey.generate(user=user, name="test")
        client = APIClient(REMOTE_ADDR=remote_addr, **extra)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client, key

    return make


@pytest.fixture
def operator(client, make_user):
    """A staff member (employee role), not a superuser, who may set and reset limits in the admin."""
    member = make_user(Role.EMPLOYEE, is_staff=True)
    member.user_permissions.add(*Permission.objects.filter(codename__in=[
        "view_quotapolicy", "add_quotapolicy", "change_quotapolicy", "delete_quotapolicy", "view_iprule",
        "add_iprule", "change_iprule", "view_userquota", "reset_quota"]))
    client.force_login(member)
    client.member = member
    return client


@pytest.fixture
def policy(db):
    def make(scope, target=None, **limits):
        fields = {"scope": scope, **limits}
        if scope == "role":
            fields["role"] = target
        elif target is not None:
            fields[scope] = target
        return QuotaPolicy.objects.create(**fields)

    return make


def _assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


async def _open_chat(channel, *, client=("127.0.0.1", 50000), headers=()):
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


@pytest.fixture
def assert_error():
    """assert_error(response, status, code) → the error object of a refused request."""
    return _assert_error


@pytest.fixture
def open_chat():
    """await open_chat(channel, client=(ip, port)) → a connected web chat socket (as a visitor)."""
    return _open_chat


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.services)])
def ledger(request, settings):
    """The budget ledger in both forms: the embedded default's, and Redis' (services only)."""
    if request.param == "local":
        return LocalLedger()
    import redis

    return RedisLedger(redis.Redis.from_url(settings.REDIS_URL))
