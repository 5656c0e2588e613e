"""Feishu / Lark: event subscription in (decrypted, signed), reply-to-message out — replayed from the
open platform's documented examples (tests/connectors/fixtures/feishu/README.md)."""
import hashlib
import json
import time

import pytest
from django.core.cache import cache

from apps.agents.runtime import agent_run
from apps.connectors.feishu import FeishuCryptoError, decrypt, signature
from apps.conversations.models import Conversation, Message
from tests.connectors.conftest import make_channel
from tests.connectors.connector_helpers import assert_refusal_logged_and_audited, assert_refused, fixture_json
from tests.connectors.feishu_dingtalk_helpers import (
    FEISHU,
    FEISHU_SENDER,
    feishu_body,
    feishu_config,
    feishu_event,
    feishu_headers,
    feishu_post,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def feishu_platform(platforms, settings):
    settings.FEISHU_API_BASE_URL = platforms.feishu_base_url
    cache.delete(f"feishu:tenant_access_token:{FEISHU['app_id']}")
    return platforms


def feishu_channel_with(agent, *, slug=None, **overrides):
    config, secrets = feishu_config(**overrides)
    return make_channel("feishu", agent, config=config, secrets=secrets, slug=slug)


@pytest.fixture
def feishu_channel(agent):
    return feishu_channel_with(agent)


@pytest.fixture
def token_only_channel(agent):
    """Without an Encrypt Key: plain pushes, authenticated by the Verification Token alone."""
    return feishu_channel_with(agent, encrypt_key="", slug="feishu-plain")


# --- the docs' sample vectors ------------------------------------------------------------


def test_docs_decryption_sample_byte_for_byte():
    sample = fixture_json("feishu/decrypt_hello_world.json")
    assert decrypt(sample["encrypt_key"], sample["encrypt"]) == sample["plaintext"].encode() == b"hello world"


def test_docs_encrypted_push_decrypts_to_its_event():
    sample = fixture_json("feishu/encrypted_event.json")
    assert decrypt(sample["encrypt_key"], sample["body"]["encrypt"]) == sample["plaintext"].encode()
    with pytest.raises(FeishuCryptoError):
        decrypt("not the key", sample["body"]["encrypt"])


def test_signature_is_sha256_hex_of_timestamp_nonce_key_and_raw_body():
    body = json.dumps(fixture_json("feishu/encrypted_event.json")["body"]).encode()
    signed = signature("1608725989", "1365316849", "kudryavka", body)
    assert signed == hashlib.sha256(b"1608725989" + b"1365316849" + b"kudryavka" + body).hexdigest()
    changed = [signature("1608725990", "1365316849", "kudryavka", body),
               signature("1608725989", "1365316848", "kudryavka", body),
               signature("1608725989", "1365316849", "kudryavkb", body),
               signature("1608725989", "1365316849", "kudryavka", body + b" ")]
    assert signed not in changed and len(set(changed)) == 4
    # Concatenation, not a keyed MAC: the same bytes split differently sign the same.
    assert signature("16087259891365316849", "", "kudryavka", body) == signed


# --- URL verification ----------------------------------------------------------------------


def test_plain_url_verification_from_the_docs_is_answered(client, agent):
    channel = feishu_channel_with(agent, encrypt_key="", verification_token="xxxxxx")
    response = feishu_post(client, channel, fixture_json("feishu/url_verification.json"), encrypt_key=None,
                           signed=False)
    assert response.status_code == 200
    assert response.json() == {"challenge": "ajls384kdjx98XX"}


def test_encrypted_url_verification_is_answered_unsigned(client, feishu_channel):
    verification = {**fixture_json("feishu/url_verification.json"), "token": FEISHU["verification_token"]}
    response = feishu_post(client, feishu_channel, verification, signed=False)
    assert response.status_code == 200
    assert response.json() == {"challenge": "ajls384kdjx98XX"}


def test_a_plaintext_url_verification_is_refused_where_the_channel_has_an_encrypt_key(client, agent):
    """Feishu encrypts everything once an Encrypt Key is set: an unsigned plaintext challenge is
    not from it (without a Verification Token, anyone's challenge would be echoed)."""
    channel = feishu_channel_with(agent, encrypt_key=FEISHU["encrypt_key"], verification_token="")
    plain = fixture_json("feishu/url_verification.json")
    assert_refused(feishu_post(client, channel, plain, encrypt_key=None, signed=False), 401)
    assert feishu_post(client, channel, plain, signed=False).json() == {"challenge": "ajls384kdjx98XX"}


def test_url_verification_with_the_wrong_token_is_refused(client, feishu_channel, token_only_channel):
    plain = fixture_json("feishu/url_verification.json")  # token "xxxxxx", not the channel's
    assert_refused(feishu_post(client, token_only_channel, plain, encrypt_key=None, signed=False), 401)
    assert_refused(feishu_post(client, feishu_channel, plain, signed=False), 401)


# --- messages ----------------------------------------------------------------------------------


def test_docs_group_message_mentioning_the_bot_is_answered_by_reply(
    client, feishu_channel, feishu_platform, django_capture_on_commit_callbacks
):
    event = feishu_event()  # the documented "@_user_1 hello", in a reply thread
    with django_capture_on_commit_callbacks() as queued:
        response = feishu_post(client, feishu_channel, event)
    assert response.status_code == 200 and response.json() == {}
    assert len(queued) == 1
    message = Message.objects.get()
    assert message.text == "hello"  # our own @mention removed
    assert message.external_user_id == FEISHU_SENDER
    assert message.conversation.external_thread_id == (
        "oc_5ce6d572455d361153b7xx51da133945:om_5ce6d572455d361153b7cb5xxfsdfsdfdsf")

    reply = agent_run(message.id)
    assert reply.status == "sent"
    [posted] = feishu_platform.state.feishu.replies
    assert posted == {**posted, "message_id": event["event"]["message"]["message_id"], "text": "Echo: hello",
                      "uuid": str(reply.id)}
    assert feishu_platform.state.feishu.token_requests == 1


def test_a_resent_reply_is_delivered_once(client, feishu_channel, feishu_platform):
    feishu_post(client, feishu_channel, feishu_event())
    inbound = Message.objects.get()
    reply = agent_run(inbound.id)
    feishu_channel.connector.send(reply, inbound=inbound)  # what a retry after a lost answer does
    assert len(feishu_platform.state.feishu.replies) == 1  # same uuid: Feishu sends it once


def test_a_rate_limited_reply_is_sent_again(client, feishu_channel, feishu_platform):
    feishu_platform.script(feishu_429=1)
    feishu_post(client, feishu_channel, feishu_event())
    reply = agent_run(Message.objects.get().id)
    assert (reply.status, reply.attempts) == ("sent", 2)
    assert [r["text"] for r in feishu_platform.state.feishu.replies] == ["Echo: hello"]


def test_p2p_messages_are_one_conversation_per_chat(client, feishu_channel, feishu_platform):
    for text in ("first", "second"):
        feishu_post(client, feishu_channel, feishu_event(text=text, chat_type="p2p", mentions=[], root_id=""))
    assert Conversation.objects.get().external_thread_id == "oc_5ce6d572455d361153b7xx51da133945"
    for message in Message.objects.order_by("created_at"):
        agent_run(message.id)
    assert [r["text"] for r in feishu_platform.state.feishu.replies] == ["Echo: first", "Echo: second"]
    assert feishu_platform.state.feishu.token_requests == 1  # the tenant token is cached


def test_other_mentions_keep_their_names(client, feishu_channel):
    mentions = [*feishu_event()["event"]["message"]["mentions"],
                {"key": "@_user_2", "id": {"open_id": "ou_someone_else"}, "name": "Ann"}]
    feishu_post(client, feishu_channel, feishu_event(text="@_user_1 ask @_user_2 please", mentions=mentions))
    assert Message.objects.get().text == "ask @Ann please"


@pytest.mark.parametrize("event", [
    pytest.param(lambda: feishu_event(mentions=[]), id="group message without a mention"),
    pytest.param(lambda: feishu_event(mentions=[{"key": "@_user_1", "id": {"open_id": "ou_other"}, "name": "X"}]),
                 id="group message mentioning someone else"),
    pytest.param(lambda: feishu_event(message_type="image", content='{"image_key": "img_1"}'), id="an image"),
    pytest.param(lambda: {**feishu_event(), "header": {**feishu_event()["header"], "event_type": "im.chat.updated_v1"}},
                 id="another event type"),
])
def test_messages_not_for_the_bot_are_acknowledged_and_dropped(client, feishu_channel, event):
    response = feishu_post(client, feishu_channel, event())
    assert response.status_code == 200
    assert not Message.objects.exists()


def test_messages_from_apps_are_never_answered(client, feishu_channel):
    event = feishu_event(chat_type="p2p")
    event["event"]["sender"]["sender_type"] = "app"
    assert feishu_post(client, feishu_channel, event).status_code == 200
    assert not Message.objects.exists()


def test_a_redelivered_event_runs_the_agent_once(client, feishu_channel, django_capture_on_commit_callbacks):
    event = feishu_event()
    with django_capture_on_commit_callbacks() as queued:
        first = feishu_post(client, feishu_channel, event)
        again = feishu_post(client, feishu_channel, event, nonce="other-nonce")  # Feishu's retry: same event_id
    assert (first.status_code, again.status_code) == (200, 200)
    assert Message.objects.count() == 1
    assert len(queued) == 1


def test_one_message_pushed_again_as_a_new_event_runs_the_agent_once(
    client, feishu_channel, django_capture_on_commit_callbacks
):
    # Feishu: "如有幂等需求请使用 message_id 去重，不要依赖 event_id" (a message may come back as a new event).
    event = feishu_event()
    with django_capture_on_commit_callbacks() as queued:
        first = feishu_post(client, feishu_channel, event)
        event["header"]["event_id"] = "another-event-id"
        again = feishu_post(client, feishu_channel, event, nonce="other-nonce")
    assert (first.status_code, again.status_code) == (200, 200)
    assert Message.objects.get().external_id == event["event"]["message"]["message_id"]
    assert len(queued) == 1


def test_token_only_channel_takes_plain_events(client, token_only_channel):
    response = feishu_post(client, token_only_channel, feishu_event(), encrypt_key=None, signed=False)
    assert response.status_code == 200
    assert Message.objects.get().text == "hello"


def test_a_documented_v1_event_is_decrypted_checked_and_ignored(client, agent):
    sample = fixture_json("feishu/encrypted_event.json")
    channel = feishu_channel_with(agent, encrypt_key=sample["encrypt_key"],
                                  verification_token="GzhQEyfUcx7eEungQFWtXgCbxSpUOJIb")
    response = feishu_post(client, channel, body=json.dumps(sample["body"]).encode(),
                           encrypt_key=sample["encrypt_key"])
    assert response.status_code == 200
    assert not Message.objects.exists()


def test_an_expired_tenant_token_is_fetched_again(client, feishu_channel, feishu_platform):
    feishu_post(client, feishu_channel, feishu_event(text="one"))
    agent_run(Message.objects.get().id)
    feishu_platform.script(expire_feishu_tokens=True)
    feishu_post(client, feishu_channel, feishu_event(text="two"))
    agent_run(Message.objects.filter(direction="in").latest("created_at").id)
    assert [r["text"] for r in feishu_platform.state.feishu.replies] == ["Echo: one", "Echo: two"]
    assert feishu_platform.state.feishu.token_requests == 2


def test_the_stand_in_answers_tokens_in_the_documented_shape(feishu_platform):
    import urllib.request

    request = urllib.request.Request(
        f"{feishu_platform.feishu_base_url}/open-apis/auth/v3/tenant_access_token/internal",
        data=json.dumps({"app_id": FEISHU["app_id"], "app_secret": "s"}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.loads(response.read())
    documented = fixture_json("feishu/tenant_access_token.json")
    assert set(answer) == set(documented) and answer["code"] == 0 and answer["tenant_access_token"].startswith("t-")


# --- refusals ----------------------------------------------------------------------------------


class TestRefusals:
    def test_forged_and_replayed_pushes_are_refused_logged_and_audited(self, client, feishu_channel):
        forged = feishu_post(client, feishu_channel, feishu_event(), signature="0" * 64)
        replayed = feishu_post(client, feishu_channel, feishu_event(), timestamp=int(time.time()) - 3600)
        unsigned = feishu_post(client, feishu_channel, feishu_event(), signed=False)
        for response, reason in ((forged, "signature_mismatch"), (replayed, "timestamp_outside_window"),
                                 (unsigned, "signature_missing")):
            assert_refused(response, 401, code="unauthenticated")
            assert_refusal_logged_and_audited(response, feishu_channel, reason=reason)

    def test_body_changed_after_signing(self, client, feishu_channel):
        body = feishu_body(feishu_event())
        headers = feishu_headers(body)
        tampered = json.dumps({"encrypt": json.loads(body)["encrypt"][:-8] + "AAAAAAA="}).encode()
        response = client.post(f"/api/v1/channels/{feishu_channel.slug}/webhook", data=tampered,
                               content_type="application/json", headers=headers)
        assert_refused(response, 401)

    def test_encrypted_with_another_key(self, client, feishu_channel):
        body = feishu_body(feishu_event(), encrypt_key="some other key")
        response = feishu_post(client, feishu_channel, body=body)  # signed with the right key
        assert_refused(response, 401)
        assert_refusal_logged_and_audited(response, feishu_channel, reason="undecryptable")

    def test_wrong_verification_token(self, client, feishu_channel, token_only_channel):
        event = feishu_event()
        event["header"]["token"] = "not-the-token"
        for channel, options in ((token_only_channel, {"encrypt_key": None, "signed": False}), (feishu_channel, {})):
            response = feishu_post(client, channel, event, **options)
            assert_refused(response, 401)
            assert_refusal_logged_and_audited(response, channel, reason="token_mismatch")

    def test_encrypted_push_to_a_channel_without_an_encrypt_key(self, client, token_only_channel):
        assert_refused(feishu_post(client, token_only_channel, feishu_event(), signed=False), 401)

    @pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"encrypt": 42}'])
    def test_malformed_bodies_are_400(self, client, feishu_channel, body):
        assert_refused(feishu_post(client, feishu_channel, body=body), 400, code="invalid_request")

    @pytest.mark.parametrize("content", ["not json", '{"no_text": 1}', '{"text": 42}'])
    def test_malformed_message_content_is_400(self, client, feishu_channel, content):
        assert_refused(feishu_post(client, feishu_channel, feishu_event(content=content)), 400)

    def test_event_without_its_ids_is_400(self, client, feishu_channel):
        event = feishu_event()
        del event["event"]["message"]["chat_id"]
        assert_refused(feishu_post(client, feishu_channel, event), 400)

    def test_wrong_content_type_is_415(self, client, feishu_channel):
        assert_refused(feishu_post(client, feishu_channel, feishu_event(), content_type="text/plain"), 415)

    def test_get_is_400(self, client, feishu_channel):
        assert_refused(client.get(f"/api/v1/channels/{feishu_channel.slug}/webhook"), 400)


def test_a_decrypted_event_or_content_nesting_too_deep_is_refused_and_not_stored(client, feishu_channel):
    """The encrypted body is flat; the event inside, and the message's content inside that, are
    checked like any body, or a too-deep document would be stored and crash every run."""
    event = feishu_event(text="hi", chat_type="p2p")
    event["x"] = json.loads("[" * 200 + "]" * 200)
    assert feishu_post(client, feishu_channel, event).status_code == 400
    deep_content = '{"text": "hi", "x": ' + "[" * 3000 + "]" * 3000 + "}"
    assert feishu_post(client, feishu_channel, feishu_event(chat_type="p2p", content=deep_content)).status_code == 400
    assert not Message.objects.exists()


def test_mentions_with_odd_keys_or_long_names_cannot_multiply_the_text(client, feishu_channel):
    """An empty key would put the name between every two characters; a long name would repeat
    itself at each placeholder. Signed by Feishu's key, but bounded all the same."""
    mentions = [{"key": "", "id": {"open_id": "ou_x"}, "name": "N" * 1000},
                {"key": "hi", "id": {"open_id": "ou_y"}, "name": "Y"},
                {"key": "@_user_2", "id": {"open_id": "ou_z"}, "name": "Z" * 1000}]
    feishu_post(client, feishu_channel, feishu_event(text="hi @_user_2 hi", chat_type="p2p", mentions=mentions))
    assert Message.objects.get().text == f"hi @{'Z' * 64} hi"


def test_names_holding_placeholders_are_not_replaced_again(client, feishu_channel):
    """A name (a person's chosen display name) that holds the next mention's placeholder: replaced
    in turn, each mention multiplied the text by 8 (2 KB of event, gigabytes of text)."""
    mentions = [{"key": f"@_user_{i}", "id": {"open_id": f"ou_{i}"}, "name": f"@_user_{i + 1}" * 8}
                for i in range(1, 7)]
    feishu_post(client, feishu_channel, feishu_event(text="@_user_1 hi", chat_type="p2p", mentions=mentions))
    assert Message.objects.get().text == "@" + "@_user_2" * 8 + " hi"


@pytest.mark.parametrize("mentions", [5, True, {"key": "@_user_1"}, "@_user_1"])
def test_mentions_that_are_not_a_list_are_no_mentions(client, feishu_channel, mentions):
    response = feishu_post(client, feishu_channel, feishu_event(text="hi", chat_type="p2p", mentions=mentions))
    assert response.status_code == 200
    assert Message.objects.get().text == "hi"
