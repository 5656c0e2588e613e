"""A flood of one refusal writes a few audit rows, not one or two per request.

Refusals before any rate applies (a denied address, a blocked user's key) are not counted by the
address, key or user rates, nor by the auth-failure lockout: each request of a flood used to write
its audit rows (kept a year by default). Now the same refusal (same action and reason, same user
or, without one, address) is audited once a minute; the request log still has every request."""
import pytest
from rest_framework.test import APIClient

from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from apps.identities.services import api_key_create, user_block
from apps.logs.models import AuditEvent, RequestLog
from apps.logs.request_log import request_log_flush
from apps.quotas.models import IpRule

pytestmark = pytest.mark.django_db

FLOOD = 40
FACE = "/v1/chat/completions"


def key_client(user, ip):
    client = APIClient(REMOTE_ADDR=ip)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiKey.generate(user=user)[1]}")
    return client


def audited(action: str, **fields) -> int:
    return AuditEvent.objects.filter(action=action, **fields).count()


def test_a_blocked_users_flood_is_audited_once_and_logged_in_full(api_channel, make_user, admin_user):
    blocked, also_blocked = make_user(), make_user()
    for user in (blocked, also_blocked):
        user_block(user=user, actor=admin_user)
    client = key_client(blocked, "192.0.2.10")
    first = client.post("/api/v1/messages", {"message": "hi"}, format="json")
    assert first.status_code == 403 and first.json()["error"]["code"] == "blocked"
    assert audited("user.refused", actor=blocked) == 1  # the first, at once
    codes = {client.post("/api/v1/messages", {"message": "hi"}, format="json").status_code for _ in range(FLOOD)}
    # Another blocked user is another refusal, audited too.
    assert key_client(also_blocked, "192.0.2.11").post(FACE, {"model": "assistant", "messages": [
        {"role": "user", "content": "hi"}]}, format="json").status_code == 403
    request_log_flush()
    assert codes == {403}
    # Refused while its key was checked: the row names the address, not the user.
    assert RequestLog.objects.filter(client_ip="192.0.2.10", rejection="blocked").count() == FLOOD + 1
    assert audited("user.refused", actor=blocked) == audited("request.refused", client_ip="192.0.2.10") == 1
    assert audited("user.refused", actor=also_blocked) == audited("request.refused", client_ip="192.0.2.11") == 1


def test_a_denied_addresss_flood_is_audited_once_per_address(api_channel, customer):
    IpRule.objects.create(action="deny", cidr="192.0.2.0/24")
    flood = APIClient(REMOTE_ADDR="192.0.2.20")
    codes = {flood.post(FACE, {"model": "x", "messages": []}, format="json").status_code for _ in range(FLOOD)}
    assert APIClient(REMOTE_ADDR="192.0.2.21").post(FACE, {}, format="json").status_code == 403
    request_log_flush()
    assert codes == {403}
    assert RequestLog.objects.filter(client_ip="192.0.2.20", rejection="ip_forbidden").count() == FLOOD
    assert audited("request.refused", client_ip="192.0.2.20") == 1
    assert audited("request.refused", client_ip="192.0.2.21") == 1


def test_a_flood_flushed_in_several_batches_is_audited_once(api_channel, customer):
    """The window is kept in the shared cache, not in one flush: the next batches of the same flood
    (or another process's) add no row."""
    IpRule.objects.create(action="deny", cidr="192.0.2.0/24")
    flood = APIClient(REMOTE_ADDR="192.0.2.30")
    for _ in range(3):
        for _ in range(5):
            assert flood.post(FACE, {}, format="json").status_code == 403
        request_log_flush(batch_size=2)
    assert RequestLog.objects.filter(client_ip="192.0.2.30").count() == 15
    assert audited("request.refused", client_ip="192.0.2.30") == 1


def test_another_key_or_address_of_the_same_user_is_audited_on_its_own(api_channel, agent, customer):
    """A noisy, misconfigured integration must not hide a second key being tried from elsewhere."""
    partner = Channel.objects.create(slug="partner", name="Partner", kind="api", default_agent=agent)
    keys = [api_key_create(user=customer, actor=None, channels=[partner]) for _ in range(2)]
    for (_key, raw), ip in zip(keys, ("198.51.100.1", "203.0.113.66"), strict=True):
        client = APIClient(REMOTE_ADDR=ip)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        for _ in range(3):
            assert client.post("/api/v1/messages", {"message": "hi"}, format="json").status_code == 403
    request_log_flush()
    refused = AuditEvent.objects.filter(action="channel.refused", actor=customer)
    assert sorted((e.detail["api_key"], e.client_ip) for e in refused) == sorted(
        [(keys[0][0].prefix, "198.51.100.1"), (keys[1][0].prefix, "203.0.113.66")])
    assert audited("request.refused", client_ip="198.51.100.1") == audited("request.refused",
                                                                            client_ip="203.0.113.66") == 1
