"""WeCom AI bot: encrypted JSON callbacks (empty receive id), streamed passive replies refreshed
from the shared cache, the response_url when the stream ran out of time, and refusals."""
import copy
import json
import time
import uuid

import pytest

from apps.agents.runtime import agent_run
from apps.connectors.wecom_aibot import StreamState, clip_utf8, stream_id_for
from apps.conversations.models import Message
from tests.connectors.aibot_helpers import (
    AIBOT,
    aibot_crypto,
    aibot_post,
    open_reply,
    refresh_callback,
    text_callback,
)
from tests.connectors.conftest import make_channel
from tests.connectors.connector_helpers import assert_refusal_logged_and_audited, assert_refused, fixture_json

pytestmark = pytest.mark.django_db


@pytest.fixture
def aibot_channel(agent, platforms):
    return make_channel("wecom_aibot", agent, config={"bot_id": AIBOT["bot_id"]},
                        secrets={"token": AIBOT["token"], "encoding_aes_key": AIBOT["encoding_aes_key"]})


def refresh(client, channel, stream_id) -> dict:
    response = aibot_post(client, channel, refresh_callback(stream_id))
    assert response.status_code == 200, response.content
    return open_reply(response.content)["stream"]


class TestCrypto:
    def test_the_official_sdk_vector_verifies_and_its_corpid_is_refused_under_the_empty_receive_id(self):
        v = fixture_json("wecom/sample_vectors.json")["verify_url"]
        crypto = aibot_crypto(token="QDG6eK", encoding_aes_key="jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C")
        crypto.verify(v["msg_signature"], v["timestamp"], v["nonce"], v["echostr"])  # same signature scheme
        with pytest.raises(ValueError, match="receive id"):
            crypto.decrypt(v["echostr"])  # an app's echostr ends with its CorpID; an AI bot's with nothing

    def test_url_verification_answers_the_decrypted_echostr(self, client, aibot_channel):
        crypto, timestamp, nonce = aibot_crypto(), str(int(time.time())), "9527"
        echostr = crypto.encrypt(b"1616140317555161061")
        signature = crypto.signature(timestamp, nonce, echostr)
        response = client.get(f"/api/v1/channels/{aibot_channel.slug}/webhook",
                              {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce, "echostr": echostr})
        assert (response.status_code, response.content) == (200, b"1616140317555161061")


class TestWireShapes:
    def test_the_passive_reply_has_the_documented_envelope_and_stream_keys(self, client, aibot_channel):
        response = aibot_post(client, aibot_channel, text_callback(), nonce="nonce-from-the-url")
        envelope, documented = json.loads(response.content), fixture_json("wecom_aibot/passive_reply_envelope.json")
        assert set(envelope) == set(documented)
        assert isinstance(envelope["timestamp"], int) and envelope["nonce"] == "nonce-from-the-url"
        reply, example = open_reply(response.content), fixture_json("wecom_aibot/stream_reply.json")
        assert reply["msgtype"] == example["msgtype"]
        assert set(reply["stream"]) <= set(example["stream"])
        assert {k: type(v) for k, v in reply["stream"].items()} == {
            k: type(example["stream"][k]) for k in reply["stream"]}

    def test_the_documented_voice_message_is_answered_from_its_transcription(self, client, aibot_channel):
        voice = copy.deepcopy(fixture_json("wecom_aibot/voice_message.json"))
        voice["aibotid"] = AIBOT["bot_id"]
        assert aibot_post(client, aibot_channel, voice).status_code == 200
        message = Message.objects.get()
        assert (message.text, message.external_id, message.external_user_id) == (
            "这是语音转成文本的内容", "CAIQrcjMjQYY/NGagIOAgAMg6PDc/w0=", "USERID")

    def test_a_mixed_message_is_answered_from_its_text_items(self, client, aibot_channel):
        mixed = {**text_callback(chattype="group", chatid="CHATID"), "msgtype": "mixed", "mixed": {"msg_item": [
            {"msgtype": "text", "text": {"content": "@机器人 这是今日的测试情况"}},
            {"msgtype": "image", "image": {"url": "https://example.com/x.png"}}]}}
        assert aibot_post(client, aibot_channel, mixed).status_code == 200
        assert Message.objects.get().text == "这是今日的测试情况"

    def test_content_is_clipped_to_20480_bytes_on_a_character_boundary(self):
        clipped = clip_utf8("流" * 7000)  # 21000 bytes
        assert len(clipped.encode()) <= 20480 and clipped == "流" * (20480 // 3)
        assert clip_utf8("short") == "short"


class TestStreamedReply:
    def test_a_text_message_opens_a_stream_refreshed_until_the_answer_is_whole(
        self, client, aibot_channel, django_capture_on_commit_callbacks
    ):
        callback = text_callback("@RobotA  what time is it?", chattype="group", chatid="wrkSFfCgAA")
        with django_capture_on_commit_callbacks() as queued:
            response = aibot_post(client, aibot_channel, callback)
        assert (response.status_code, len(queued)) == (200, 1)
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        assert open_reply(response.content) == {
            "msgtype": "stream", "stream": {"id": stream_id, "finish": False, "content": ""}}
        message = Message.objects.get()
        assert (message.text, message.external_id, message.external_user_id) == (
            "what time is it?", callback["msgid"], "zhangsan")
        assert refresh(client, aibot_channel, stream_id) == {"id": stream_id, "finish": False, "content": ""}

        assert agent_run(message.id).status == "sent"
        assert StreamState(aibot_channel.pk, stream_id).text() == "Echo: what time is it?"  # the deltas, shared
        assert refresh(client, aibot_channel, stream_id) == {
            "id": stream_id, "finish": True, "content": "Echo: what time is it?"}

    def test_when_the_stream_runs_out_of_time_the_answer_goes_to_response_url(
        self, client, aibot_channel, platforms
    ):
        aibot_channel.config["stream_window_seconds"] = 0.05
        aibot_channel.save()
        url = platforms.aibot_response_url()
        callback = text_callback("a long question", response_url=url)
        assert aibot_post(client, aibot_channel, callback).status_code == 200
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        deadline = time.monotonic() + 5
        while (stream := refresh(client, aibot_channel, stream_id))["finish"] is False:
            assert time.monotonic() < deadline
        assert stream == {"id": stream_id, "finish": True, "content": ""}  # closed with what there was

        stored = Message.objects.get()  # the URL is a credential for an hour: kept in the cache only
        assert url not in json.dumps([stored.metadata, stored.raw_payload])
        assert agent_run(stored.id).status == "sent"
        assert platforms.state.aibot_responses == [
            {"code": url.rsplit("=", 1)[1], "msgtype": "markdown", "markdown": {"content": "Echo: a long question"}}]

    def test_a_response_url_off_the_wecom_api_gets_nothing(self, client, aibot_channel, platforms):
        """A callback naming another host (here the stand-ins' CRM receiver, which records what it
        gets) as its response_url: the answer is not posted there, the message is marked failed."""
        aibot_channel.config["stream_window_seconds"] = 0.05
        aibot_channel.save()
        callback = text_callback("a long question", response_url=f"{platforms.crm_callback_url}?steal=1")
        assert aibot_post(client, aibot_channel, callback).status_code == 200
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        deadline = time.monotonic() + 5
        while refresh(client, aibot_channel, stream_id)["finish"] is False:
            assert time.monotonic() < deadline
        assert agent_run(Message.objects.get().id).status == "failed"
        assert platforms.state.crm_callbacks == [] and platforms.state.crm_rejected == 0

    def test_an_answer_within_the_window_is_not_posted_to_response_url(self, client, aibot_channel, platforms):
        callback = text_callback("quick one", response_url=platforms.aibot_response_url())
        aibot_post(client, aibot_channel, callback)
        agent_run(Message.objects.get().id)
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        assert refresh(client, aibot_channel, stream_id)["finish"] is True
        assert platforms.state.aibot_responses == []

    def test_a_redelivered_callback_gets_the_same_stream_and_runs_the_agent_once(self, client, aibot_channel):
        callback = text_callback("once please")
        first = open_reply(aibot_post(client, aibot_channel, callback).content)
        again = open_reply(aibot_post(client, aibot_channel, callback).content)
        assert first == again
        assert Message.objects.count() == 1

    def test_a_refused_sender_is_told_in_the_first_reply(self, client, aibot_channel):
        aibot_channel.unknown_senders, aibot_channel.refusal_message = "refuse", "Ask IT for access first."
        aibot_channel.save()
        callback = text_callback("let me in")
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        response = aibot_post(client, aibot_channel, callback)
        assert response.status_code == 200
        told = {"id": stream_id, "finish": True, "content": "Ask IT for access first."}
        assert open_reply(response.content)["stream"] == told
        assert refresh(client, aibot_channel, stream_id) == told
        assert not Message.objects.filter(direction="in", status="accepted").exists()

    def test_a_person_answering_ends_every_held_stream_with_their_answer(self, client, aibot_channel, admin_user,
                                                                         monkeypatch):
        """The run streaming the first message when a person answers the second: both streams end
        with the person's answer, the first not emptied by the run taking its pieces back."""
        from apps.connectors.wecom_aibot import WeComAiBotConnector
        from apps.routing.services import handoff_reply, handoff_start

        first, second = text_callback("first question"), text_callback("second question")
        for callback in (first, second):
            assert aibot_post(client, aibot_channel, callback).status_code == 200
        streams = [stream_id_for(aibot_channel.slug, c["msgid"]) for c in (first, second)]
        message = Message.objects.get(external_id=first["msgid"])
        stream_piece = WeComAiBotConnector.send_delta

        def a_person_answers_at_the_first_piece(connector, inbound, piece):
            stream_piece(connector, inbound, piece)
            if not StreamState(aibot_channel.pk, streams[1]).final():
                handoff_start(conversation=inbound.conversation, staff=admin_user)
                handoff_reply(conversation=inbound.conversation, staff=admin_user, text="Sam here.")

        monkeypatch.setattr(WeComAiBotConnector, "send_delta", a_person_answers_at_the_first_piece)
        assert agent_run(message.id) is None  # its reply dropped: the person's answers it
        for stream_id in streams:
            assert refresh(client, aibot_channel, stream_id) == {"id": stream_id, "finish": True,
                                                                 "content": "Sam here."}

    def test_a_person_answering_messages_whose_streams_closed_is_posted_once(self, client, aibot_channel,
                                                                             platforms, admin_user):
        """Past the stream window each held message's stream closed: the answer goes to the chat
        once (the latest message's response_url), not once per held message."""
        from apps.routing.services import handoff_reply, handoff_start

        aibot_channel.config["stream_window_seconds"] = 0.05
        aibot_channel.save()
        callbacks = [text_callback(text, response_url=platforms.aibot_response_url())
                     for text in ("a human please", "hello?", "anyone??")]
        for callback in callbacks:
            assert aibot_post(client, aibot_channel, callback).status_code == 200
        conversation = Message.objects.get(external_id=callbacks[0]["msgid"]).conversation
        handoff_start(conversation=conversation, staff=admin_user)
        deadline = time.monotonic() + 5
        for callback in callbacks:  # WeCom stops waiting: each stream closes, empty
            stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
            while refresh(client, aibot_channel, stream_id)["finish"] is False:
                assert time.monotonic() < deadline
        handoff_reply(conversation=conversation, staff=admin_user, text="Sam here.")
        assert [r["markdown"]["content"] for r in platforms.state.aibot_responses] == ["Sam here."]

    def test_a_persons_follow_up_to_a_finished_stream_is_posted(self, client, aibot_channel, platforms, admin_user):
        from apps.routing.services import handoff_reply, handoff_start

        callback = text_callback("question", response_url=platforms.aibot_response_url())
        aibot_post(client, aibot_channel, callback)
        message = Message.objects.get(external_id=callback["msgid"])
        assert agent_run(message.id).status == "sent"
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        assert refresh(client, aibot_channel, stream_id) == {"id": stream_id, "finish": True,
                                                             "content": "Echo: question"}
        handoff_start(conversation=message.conversation, staff=admin_user)
        reply = handoff_reply(conversation=message.conversation, staff=admin_user, text="Anything else?")
        assert reply.follows_up and Message.objects.get(pk=reply.pk).status == "sent"
        assert [r["markdown"]["content"] for r in platforms.state.aibot_responses] == ["Anything else?"]
        assert refresh(client, aibot_channel, stream_id)["content"] == "Echo: question"  # the answer stands

    def test_a_person_answering_an_earlier_message_after_a_later_one_failed_is_shown_once(
            self, client, aibot_channel, platforms, admin_user):
        from apps.agents.claims import claim
        from apps.agents.delivery import fail_message
        from apps.core.errors import LLMError
        from apps.routing.services import handoff_reply, handoff_start

        callbacks = [text_callback(text, response_url=platforms.aibot_response_url())
                     for text in ("first question", "second question")]
        for callback in callbacks:
            assert aibot_post(client, aibot_channel, callback).status_code == 200
        first, second = (Message.objects.get(external_id=c["msgid"]) for c in callbacks)
        claim(first.id)  # its run waits on a slow model
        fail_message(claim(second.id, ignore_order=True), LLMError("provider_error", "The model failed."))
        handoff_start(conversation=first.conversation, staff=admin_user)
        reply = handoff_reply(conversation=first.conversation, staff=admin_user, text="Sam here.")
        assert (reply.reply_to_id, reply.follows_up) == (first.id, False)  # the latest message it answers
        streams = [refresh(client, aibot_channel, stream_id_for(aibot_channel.slug, c["msgid"]))["content"]
                   for c in callbacks]
        assert streams == ["Sam here.", "The assistant could not answer right now. Please try again."]
        assert platforms.state.aibot_responses == []

    def test_a_persons_answer_after_the_agent_failed_goes_after_the_shown_failure(
            self, client, aibot_channel, platforms, admin_user):
        """The usual reason to take over: the agent failed, and its stream ended with the failure.
        The person's answer to that message is posted to its response_url, and posted once even
        when its delivery is retried."""
        from apps.agents.claims import claim
        from apps.agents.delivery import deliver, fail_message
        from apps.core.errors import LLMError
        from apps.routing.services import handoff_reply, handoff_start

        callback = text_callback("question", response_url=platforms.aibot_response_url())
        assert aibot_post(client, aibot_channel, callback).status_code == 200
        message = Message.objects.get(external_id=callback["msgid"])
        fail_message(claim(message.id), LLMError("provider_error", "The model failed."))
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        failure = "The assistant could not answer right now. Please try again."
        assert refresh(client, aibot_channel, stream_id) == {"id": stream_id, "finish": True, "content": failure}
        handoff_start(conversation=message.conversation, staff=admin_user)
        reply = handoff_reply(conversation=message.conversation, staff=admin_user, text="Sam here, sorry.")
        assert (reply.reply_to_id, reply.status) == (message.id, "sent")
        assert [r["markdown"]["content"] for r in platforms.state.aibot_responses] == ["Sam here, sorry."]
        deliver(reply, inbound=Message.objects.get(pk=message.pk))  # a retry of that delivery
        assert len(platforms.state.aibot_responses) == 1
        assert refresh(client, aibot_channel, stream_id)["content"] == failure  # the failure stands

    def test_a_person_is_told_when_their_answer_could_not_be_delivered(
            self, client, aibot_channel, platforms, admin_user):
        """The agent's answer came after the window and used the message's response_url (WeCom
        takes it once): the person's follow-up is refused there, and the admin and the console
        say so rather than "Reply sent."."""
        aibot_channel.config["stream_window_seconds"] = 0.05
        aibot_channel.save()
        callback = text_callback("question", response_url=platforms.aibot_response_url())
        assert aibot_post(client, aibot_channel, callback).status_code == 200
        message = Message.objects.get(external_id=callback["msgid"])
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        deadline = time.monotonic() + 5
        while refresh(client, aibot_channel, stream_id)["finish"] is False:  # the window closes it, empty
            assert time.monotonic() < deadline
        assert agent_run(message.id).status == "sent"
        assert [r["markdown"]["content"] for r in platforms.state.aibot_responses] == ["Echo: question"]
        admin_user.is_superuser = True
        admin_user.save()
        client.force_login(admin_user)
        admin = f"/admin/conversations/conversation/{message.conversation_id}/handoff/"
        client.post(admin + "start/")
        page = client.post(admin + "reply/", {"text": "Anything else?"}, follow=True).content.decode()
        reply = Message.objects.get(direction="out", text="Anything else?")
        assert reply.status == "failed" and "errcode" in reply.error_message
        assert "Reply sent." not in page and "the channel did not take it" in page
        console = client.post(f"/console/c/{message.conversation_id}/reply/", {"text": "Hello?"}, follow=True)
        assert "the channel did not take it" in console.content.decode()
        transcript = client.get(f"/console/c/{message.conversation_id}/transcript/").content.decode()
        assert transcript.count('class="undelivered"') == 2

    def test_a_stream_claimed_by_its_answer_is_not_finished_before_the_answer_is_there(
            self, client, aibot_channel):
        """Past the window, between an answer's claim and its text being stored, a refresh keeps the
        stream open rather than end it with the partial text."""
        aibot_channel.config["stream_window_seconds"] = 0.05
        aibot_channel.save()
        callback = text_callback("question")
        aibot_post(client, aibot_channel, callback)
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        state = StreamState(aibot_channel.pk, stream_id)
        state.set_text("Echo: que")
        assert state.claim("reply:some-reply")
        time.sleep(0.1)
        assert refresh(client, aibot_channel, stream_id) == {"id": stream_id, "finish": False, "content": "Echo: que"}
        state.set_final("Echo: question")
        assert refresh(client, aibot_channel, stream_id) == {"id": stream_id, "finish": True,
                                                             "content": "Echo: question"}

    def test_an_unknown_stream_is_finished_empty(self, client, aibot_channel):
        assert refresh(client, aibot_channel, "gw-never-opened") == {
            "id": "gw-never-opened", "finish": True, "content": ""}

    def test_events_and_other_message_types_are_acknowledged_without_an_answer(self, client, aibot_channel):
        event = {"msgid": "e1", "aibotid": AIBOT["bot_id"], "chattype": "single", "from": {"userid": "zhangsan"},
                 "msgtype": "event", "event": {"eventtype": "enter_chat"}}
        image = {**text_callback(), "msgtype": "image", "image": {"url": "https://example.com/x"}}
        for payload in (event, image):
            response = aibot_post(client, aibot_channel, payload)
            assert (response.status_code, response.content) == (200, b"")
        assert not Message.objects.exists()


class TestRefusals:
    def test_forged_and_stale_callbacks_are_refused_and_audited(self, client, aibot_channel):
        forged = aibot_post(client, aibot_channel, text_callback(), crypto=aibot_crypto(token="guess"))
        stale = aibot_post(client, aibot_channel, text_callback(), timestamp=int(time.time()) - 3600)
        for response, reason in ((forged, "signature_mismatch"), (stale, "timestamp_outside_window")):
            assert_refused(response, 401, code="unauthenticated")
            assert_refusal_logged_and_audited(response, aibot_channel, reason=reason)

    def test_a_callback_encrypted_with_a_receive_id_or_for_another_bot_is_refused(self, client, aibot_channel):
        with_corp = aibot_post(client, aibot_channel, text_callback(), crypto=aibot_crypto(receive_id="ww0123"))
        assert_refused(with_corp, 401)
        assert_refusal_logged_and_audited(with_corp, aibot_channel, reason="undecryptable")
        other_bot = aibot_post(client, aibot_channel, text_callback(bot_id="aib-someone-else"))
        assert_refused(other_bot, 401)
        assert_refusal_logged_and_audited(other_bot, aibot_channel, reason="wrong_bot")

    def test_another_bots_channel_cannot_read_a_stream(self, client, aibot_channel, agent):
        """Bots may share a Token and EncodingAESKey: a refresh signed for another bot's channel,
        naming this channel's stream, finds nothing there."""
        callback = text_callback("a private question")
        aibot_post(client, aibot_channel, callback)
        agent_run(Message.objects.get().id)
        stream_id = stream_id_for(aibot_channel.slug, callback["msgid"])
        assert refresh(client, aibot_channel, stream_id)["content"] == "Echo: a private question"
        other = make_channel("wecom_aibot", agent, slug="other-bot", config={},
                             secrets={"token": AIBOT["token"], "encoding_aes_key": AIBOT["encoding_aes_key"]})
        assert refresh(client, other, stream_id) == {"id": stream_id, "finish": True, "content": ""}

    @pytest.mark.parametrize("bot_id", [None, "", ["aib-test-bot"]])
    def test_a_callback_naming_no_bot_is_refused_even_without_a_configured_bot_id(self, client, agent, bot_id):
        for config in ({"bot_id": AIBOT["bot_id"]}, {}):  # bots may share a Token and EncodingAESKey
            channel = make_channel("wecom_aibot", agent, slug=f"aibot-{uuid.uuid4().hex[:6]}", config=config,
                                   secrets={"token": AIBOT["token"], "encoding_aes_key": AIBOT["encoding_aes_key"]})
            callback = text_callback()
            if bot_id is None:
                del callback["aibotid"]
            else:
                callback["aibotid"] = bot_id
            response = aibot_post(client, channel, callback)
            assert_refused(response, 401)
            assert_refusal_logged_and_audited(response, channel, reason="wrong_bot")
        assert not Message.objects.exists()

    def test_malformed_bodies_are_a_400(self, client, aibot_channel):
        assert_refused(aibot_post(client, aibot_channel, text_callback(), body=b"{not json"), 400)
        assert_refused(aibot_post(client, aibot_channel, text_callback(), body=b'{"Encrypt": "x"}'), 400)
        assert_refused(aibot_post(client, aibot_channel, b"not json inside"), 400, code="invalid_request")
        assert_refused(aibot_post(client, aibot_channel, b"[1]"), 400, code="invalid_request")
        no_user = text_callback()
        del no_user["from"]
        assert_refused(aibot_post(client, aibot_channel, no_user), 400, code="invalid_request")
        assert_refused(aibot_post(client, aibot_channel, {**text_callback(), "chattype": "channel"}), 400)
        assert_refused(aibot_post(client, aibot_channel, {**refresh_callback("x"), "stream": {}}), 400)
        assert_refused(aibot_post(client, aibot_channel, text_callback(), content_type="text/xml"), 415)

    def test_a_bad_encoding_aes_key_is_a_misconfigured_channel(self, client, agent):
        channel = make_channel("wecom_aibot", agent, slug=f"bad-{uuid.uuid4().hex[:6]}",
                               secrets={"token": "t", "encoding_aes_key": "too-short"})
        response = aibot_post(client, channel, text_callback())
        assert (response.status_code, response.json()["error"]["code"]) == (503, "channel_misconfigured")


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_a_decrypted_callback_nesting_too_deep_is_refused_and_not_stored(client, aibot_channel, content_type):
    """The outer body is flat ({"encrypt": ...}); what it decrypts to is checked like any body,
    or a too-deep document would be stored and crash every run that loads its message."""
    callback = text_callback("deep")
    callback["x"] = json.loads("[" * 200 + "]" * 200)
    response = aibot_post(client, aibot_channel, callback, content_type=content_type)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert not Message.objects.exists()
