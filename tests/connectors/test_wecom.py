"""WeCom self-built app: the official SDK sample vectors, encrypted callbacks in, message/send out."""
import time
import urllib.parse

import pytest

from apps.agents.runtime import agent_run
from apps.connectors.wecom_crypto import WeComCrypto, WeComCryptoError
from apps.conversations.models import Message
from tests.connectors.connector_helpers import (
    WECOM,
    assert_refusal_logged_and_audited,
    assert_refused,
    fixture_json,
    wecom_crypto,
    wecom_post,
    wecom_text_xml,
)

SAMPLE = fixture_json("wecom/sample_vectors.json")


def sample_crypto() -> WeComCrypto:
    return WeComCrypto(token=SAMPLE["token"], encoding_aes_key=SAMPLE["encoding_aes_key"],
                       receive_id=SAMPLE["corp_id"])


class TestOfficialSampleVectors:
    """Byte-exact against WeCom's WXBizMsgCrypt SDK sample (token QDG6eK, CorpID wx5823bf96d3bd56c7)."""

    def test_verify_url_sample(self):
        crypto, v = sample_crypto(), SAMPLE["verify_url"]
        assert crypto.signature(v["timestamp"], v["nonce"], v["echostr"]) == v["msg_signature"]
        crypto.verify(v["msg_signature"], v["timestamp"], v["nonce"], v["echostr"])
        assert crypto.decrypt(v["echostr"]).isdigit()  # the SDK sample's echostr is a random number

    def test_callback_sample_decrypts_to_the_documented_plaintext(self):
        crypto, c = sample_crypto(), SAMPLE["callback"]
        encrypt = c["body"].split("<Encrypt><![CDATA[")[1].split("]]>")[0]
        assert crypto.signature(c["timestamp"], c["nonce"], encrypt) == c["msg_signature"]
        assert crypto.decrypt(encrypt).decode() == c["plaintext"]

    def test_round_trip_reproduces_the_sample_ciphertext(self):
        crypto, c = sample_crypto(), SAMPLE["callback"]
        encrypt = c["body"].split("<Encrypt><![CDATA[")[1].split("]]>")[0]
        # The sample's 16 random bytes are the first AES block's plaintext; with them, encrypting
        # the documented plaintext must give the SDK's ciphertext exactly.
        from base64 import b64decode

        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        decryptor = Cipher(algorithms.AES(crypto.key), modes.CBC(crypto.key[:16])).decryptor()
        random16 = (decryptor.update(b64decode(encrypt)[:16]))
        assert crypto.encrypt(c["plaintext"].encode(), random16=random16) == encrypt

    def test_wrong_corp_id_tampered_ciphertext_and_bad_signature_are_refused(self):
        c = SAMPLE["callback"]
        encrypt = c["body"].split("<Encrypt><![CDATA[")[1].split("]]>")[0]
        other_corp = WeComCrypto(token=SAMPLE["token"], encoding_aes_key=SAMPLE["encoding_aes_key"],
                                 receive_id="ww-someone-else")
        with pytest.raises(WeComCryptoError, match="CorpID"):
            other_corp.decrypt(encrypt)
        tampered = encrypt[:40] + ("A" if encrypt[40] != "A" else "B") + encrypt[41:]
        with pytest.raises(WeComCryptoError):
            sample_crypto().decrypt(tampered)
        with pytest.raises(WeComCryptoError):
            sample_crypto().verify(c["msg_signature"], c["timestamp"], "other-nonce", encrypt)


@pytest.mark.django_db
class TestCallback:
    def test_url_verification_answers_the_decrypted_echostr(self, client, wecom_channel):
        crypto, timestamp, nonce = wecom_crypto(), str(int(time.time())), "263014780"
        echostr = crypto.encrypt(b"8215648651203458")
        query = urllib.parse.urlencode({"msg_signature": crypto.signature(timestamp, nonce, echostr),
                                        "timestamp": timestamp, "nonce": nonce, "echostr": echostr})
        response = client.get(f"/api/v1/channels/{wecom_channel.slug}/webhook?{query}")
        assert response.status_code == 200 and response.content == b"8215648651203458"

    def test_text_message_is_acked_empty_and_answered_through_message_send(
        self, client, wecom_channel, platforms, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks() as queued:
            response = wecom_post(client, wecom_channel, wecom_text_xml(user="zhangsan", text="你好", msg_id="42"))
        assert (response.status_code, response.content) == (200, b"")
        assert len(queued) == 1
        message = Message.objects.get()
        assert (message.text, message.external_id, message.external_user_id) == ("你好", "42", "zhangsan")
        assert agent_run(message.id).status == "sent"
        [sent] = platforms.state.wecom_messages
        assert sent == {"touser": "zhangsan", "msgtype": "text", "agentid": 1000002, "text": {"content": "Echo: 你好"}}

    def test_same_msgid_twice_runs_the_agent_once(self, client, wecom_channel, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks() as queued:
            for _ in range(2):
                assert wecom_post(client, wecom_channel, wecom_text_xml(msg_id="777")).status_code == 200
        assert Message.objects.count() == 1 and len(queued) == 1

    def test_events_are_acknowledged_and_ignored(self, client, wecom_channel):
        event = (f"<xml><ToUserName><![CDATA[{WECOM['corp_id']}]]></ToUserName><FromUserName><![CDATA[zhangsan]]>"
                 f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
                 f"<Event><![CDATA[enter_agent]]></Event><EventKey><![CDATA[]]></EventKey>"
                 f"<AgentID>{WECOM['agent_id']}</AgentID></xml>").encode()
        response = wecom_post(client, wecom_channel, event)
        assert (response.status_code, response.content) == (200, b"")
        assert not Message.objects.exists()

    @pytest.mark.parametrize("addressee", [{"agent_id": "1000003"}, {"corp_id": "wwanothercorp0000"},
                                           {"agent_id": ""}], ids=["other-app", "other-corp", "no-agent"])
    def test_a_message_for_another_app_or_corp_is_refused_and_audited(self, client, wecom_channel, addressee):
        plaintext = wecom_text_xml(**addressee)
        if addressee.get("agent_id") == "":
            plaintext = plaintext.replace(f"<AgentID>{WECOM['agent_id']}</AgentID>".encode(), b"")
        response = wecom_post(client, wecom_channel, plaintext)
        assert_refused(response, 403, code="forbidden")
        assert_refusal_logged_and_audited(response, wecom_channel, code="forbidden", reason="wrong_recipient")

    def test_an_event_without_agent_id_is_still_acknowledged(self, client, wecom_channel):
        event = (f"<xml><ToUserName><![CDATA[{WECOM['corp_id']}]]></ToUserName><FromUserName><![CDATA[sys]]>"
                 f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
                 f"<Event><![CDATA[change_contact]]></Event></xml>").encode()
        assert wecom_post(client, wecom_channel, event).status_code == 200

    def test_access_token_is_cached_and_refreshed_when_expired(self, client, wecom_channel, platforms):
        for msg_id in ("1", "2"):
            wecom_post(client, wecom_channel, wecom_text_xml(msg_id=msg_id, user=f"user-{msg_id}"))
        first, second = Message.objects.order_by("created_at")
        agent_run(first.id)
        assert platforms.state.wecom_token_requests == 1
        platforms.script(expire_wecom_tokens=True)  # WeCom now answers errcode 42001
        assert agent_run(second.id).status == "sent"
        assert platforms.state.wecom_token_requests == 2
        assert len(platforms.state.wecom_messages) == 2


@pytest.mark.django_db
class TestRefusals:
    def test_forged_signature(self, client, wecom_channel):
        assert_refused(wecom_post(client, wecom_channel, wecom_text_xml(), crypto=wecom_crypto(token="forged")), 401)

    def test_stale_timestamp(self, client, wecom_channel):
        assert_refused(wecom_post(client, wecom_channel, wecom_text_xml(), timestamp=int(time.time()) - 3600), 401)

    def test_forged_and_replayed_callbacks_are_logged_and_audited(self, client, wecom_channel):
        forged = wecom_post(client, wecom_channel, wecom_text_xml(), crypto=wecom_crypto(token="forged"))
        replayed = wecom_post(client, wecom_channel, wecom_text_xml(), timestamp=int(time.time()) - 3600)
        for response, reason in ((forged, "signature_mismatch"), (replayed, "timestamp_outside_window")):
            assert_refusal_logged_and_audited(response, wecom_channel, reason=reason)

    def test_tampered_ciphertext_correctly_signed(self, client, wecom_channel):
        encrypt = wecom_crypto().encrypt(wecom_text_xml())
        tampered = encrypt[:-30] + ("A" if encrypt[-30] != "A" else "B") + encrypt[-29:]
        assert_refused(wecom_post(client, wecom_channel, encrypt=tampered), 401)

    def test_wrong_corp_id(self, client, wecom_channel):
        assert_refused(wecom_post(client, wecom_channel, wecom_text_xml(),
                                  crypto=wecom_crypto(corp_id="ww-another-company")), 401)

    def test_xml_entity_bomb_in_the_envelope(self, client, wecom_channel):
        bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                "<xml><Encrypt>&lol2;</Encrypt></xml>")
        assert_refused(wecom_post(client, wecom_channel, body=bomb, encrypt="x", signature="x"), 400)

    def test_xml_entity_in_the_encrypted_message(self, client, wecom_channel):
        inner = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                 b"<xml><MsgType>text</MsgType><Content>&xxe;</Content></xml>")
        assert_refused(wecom_post(client, wecom_channel, inner), 400)

    @pytest.mark.parametrize("encoding", ["gbk", "utf-32", "made-up"])
    def test_xml_in_an_encoding_the_parser_cannot_read(self, client, wecom_channel, encoding):
        # Before the signature is checked (the envelope) and after (the decrypted message).
        envelope = f'<?xml version="1.0" encoding="{encoding}"?><xml><Encrypt>abc</Encrypt></xml>'
        assert_refused(wecom_post(client, wecom_channel, body=envelope, encrypt="x", signature="x"), 400)
        inner = f'<?xml version="1.0" encoding="{encoding}"?><xml><MsgType>text</MsgType></xml>'.encode()
        assert_refused(wecom_post(client, wecom_channel, inner), 400)

    def test_not_xml(self, client, wecom_channel):
        assert_refused(wecom_post(client, wecom_channel, body="{}", encrypt="x", signature="x"), 400)

    def test_wrong_content_type(self, client, wecom_channel):
        assert_refused(wecom_post(client, wecom_channel, wecom_text_xml(), content_type="application/json"), 415)

    def test_oversized_body(self, client, wecom_channel, settings):
        settings.CONNECTOR_WEBHOOK_MAX_BODY_BYTES = 2048
        assert_refused(wecom_post(client, wecom_channel, wecom_text_xml(text="很长" * 2000)), 413)
