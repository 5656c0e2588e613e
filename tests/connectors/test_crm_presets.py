"""HubSpot (signature v3) and Zendesk (webhook signature): the vendors' sample vectors, their
payloads through the pipeline, and refusals of forged, stale and malformed requests."""
import json
import time

import pytest

from apps.agents.runtime import agent_run
from apps.connectors.crm_presets import (
    ZENDESK_SIGNATURE_HEADER,
    ZENDESK_TIMESTAMP_HEADER,
    _epoch_from_iso8601,
    hubspot_v3_signature,
    zendesk_signature,
)
from apps.conversations.models import Message
from tests.connectors.conftest import make_channel
from tests.connectors.connector_helpers import FIXTURES, assert_refusal_logged_and_audited, assert_refused, fixture_json
from tests.connectors.crm_preset_helpers import (
    HUBSPOT_CLIENT_SECRET,
    ZENDESK_SECRET,
    hubspot_post,
    zendesk_post,
    zendesk_timestamp,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def hubspot_channel(agent, platforms):
    return make_channel("hubspot", agent, config={
        "callback_url": platforms.crm_callback_url,
        "field_map": {"user_id": "contact_id", "message": "question", "external_id": "event_id"},
    }, secrets={"client_secret": HUBSPOT_CLIENT_SECRET})


@pytest.fixture
def zendesk_channel(agent, platforms):
    return make_channel("zendesk", agent, config={
        "callback_url": platforms.crm_callback_url,
        "field_map": {"user_id": "requester.id", "message": "comment", "external_id": "update_id",
                      "thread_id": "ticket_id"},
    }, secrets={"secret": ZENDESK_SECRET})


def workflow_body(question="Where is my order?", event_id="enr-1", contact="501"):
    return {"event_id": event_id, "contact_id": contact, "question": question, "firstname": "Ana"}


def end_user_message(text="Can I change my plan?", event_id="01JQMQH83YNAKWSWJ8B1QH2NSD"):
    payload = fixture_json("zendesk/message_added.json")
    payload["id"] = event_id
    payload["event"]["actor"] = {"id": "end-user-7", "name": "Ana", "type": "end_user"}
    payload["event"]["message"]["body"] = text
    return payload


class TestHubSpotSignature:
    def test_the_sdk_sample_vector_byte_for_byte(self):
        v = fixture_json("hubspot/signature_v3_example.json")
        assert hubspot_v3_signature(v["client_secret"], method=v["method"], uri=v["uri"], body=v["body"].encode(),
                                    timestamp=v["timestamp"]) == v["signature"]

    def test_the_listed_escapes_in_the_uri_are_decoded_before_signing(self):
        sign = lambda uri: hubspot_v3_signature("s", method="POST", uri=uri, body=b"{}", timestamp="1")  # noqa: E731
        assert sign("https://x.test/hook?a=b%3Ac%2Cd%40e") == sign("https://x.test/hook?a=b:c,d@e")
        assert sign("https://x.test/hook?a=b%20c") != sign("https://x.test/hook?a=b c")  # not in the table


class TestHubSpot:
    def test_a_workflow_webhook_runs_the_agent_and_the_reply_is_called_back(
        self, client, hubspot_channel, platforms, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks() as queued:
            response = hubspot_post(client, hubspot_channel, workflow_body())
        assert (response.status_code, response.json(), len(queued)) == (202, {"status": "accepted"}, 1)
        message = Message.objects.get()
        assert (message.text, message.external_id, message.external_user_id) == ("Where is my order?", "enr-1", "501")
        assert agent_run(message.id).status == "sent"
        [callback] = platforms.state.crm_callbacks
        body = json.loads(callback["body"])
        assert (body["reply_to"], body["user_id"], body["message"]) == ("enr-1", "501", "Echo: Where is my order?")

    def test_the_docs_contact_creation_batch_is_acknowledged_and_ignored(self, client, hubspot_channel):
        body = (FIXTURES / "hubspot/contact_creation_events.json").read_bytes()
        response = hubspot_post(client, hubspot_channel, body=body)
        assert (response.status_code, response.json()) == (200, {"status": "ignored"})
        assert not Message.objects.exists()

    def test_a_batch_answers_only_its_items_with_a_message(self, client, hubspot_channel):
        events = json.loads((FIXTURES / "hubspot/contact_creation_events.json").read_text())
        response = hubspot_post(client, hubspot_channel, [*events, workflow_body(event_id="enr-9")])
        assert response.status_code == 202
        assert list(Message.objects.values_list("external_id", flat=True)) == ["enr-9"]

    def test_redeliveries_are_answered_once(self, client, hubspot_channel):
        for _ in range(2):  # HubSpot retries with a new timestamp, so a new signature
            assert hubspot_post(client, hubspot_channel, workflow_body()).status_code == 202
        hubspot_post(client, hubspot_channel, workflow_body(event_id="enr-2", question="and another"))
        assert Message.objects.count() == 2
        assert len({m.conversation_id for m in Message.objects.all()}) == 1

    def test_the_configured_public_url_is_what_is_signed(self, client, hubspot_channel):
        public = "https://gateway.example.com/api/v1/channels/hubspot/webhook"
        assert_refused(hubspot_post(client, hubspot_channel, workflow_body(), uri=public), 401)
        hubspot_channel.config["webhook_url"] = public
        hubspot_channel.save()
        assert hubspot_post(client, hubspot_channel, workflow_body(), uri=public).status_code == 202

    def test_forged_stale_and_malformed_stamps_are_refused_and_audited(self, client, hubspot_channel):
        stale = str(int((time.time() - 301) * 1000))
        for kwargs, reason in (
            ({"secret": "guess"}, "signature_mismatch"),
            ({"timestamp": stale}, "timestamp_outside_window"),
            ({"timestamp": "yesterday"}, "timestamp_malformed"),
        ):
            response = hubspot_post(client, hubspot_channel, workflow_body(), **kwargs)
            assert_refused(response, 401, code="unauthenticated")
            assert_refusal_logged_and_audited(response, hubspot_channel, reason=reason)

    def test_a_tampered_body_is_refused(self, client, hubspot_channel):
        good = hubspot_post(client, hubspot_channel, workflow_body(event_id="x"))
        signature = good.wsgi_request.headers["X-HubSpot-Signature-v3"]
        timestamp = good.wsgi_request.headers["X-HubSpot-Request-Timestamp"]
        response = hubspot_post(client, hubspot_channel, workflow_body(event_id="x", question="transfer money"),
                                signature=signature, timestamp=timestamp)
        assert response.status_code == 401
        assert Message.objects.count() == 1

    def test_malformed_bodies_are_a_400(self, client, hubspot_channel):
        assert_refused(hubspot_post(client, hubspot_channel, body=b"{not json"), 400, code="invalid_request")
        assert_refused(hubspot_post(client, hubspot_channel, body=b'"a string"'), 400, code="invalid_request")
        payload = workflow_body()
        del payload["question"]
        assert_refused(hubspot_post(client, hubspot_channel, payload), 400, code="invalid_request")


class TestZendeskSignature:
    def test_the_docs_test_secret_signs_the_docs_payload(self):
        v = fixture_json("zendesk/signature_example.json")
        body = (FIXTURES / "zendesk" / v["body_file"]).read_bytes()
        assert zendesk_signature(v["signing_secret"], timestamp=v["timestamp"], body=body) == v["signature"]


    def test_the_documented_headers_and_timestamp_format_are_what_we_read(self):
        headers = fixture_json("zendesk/request_headers.json")
        assert {ZENDESK_SIGNATURE_HEADER.lower(), ZENDESK_TIMESTAMP_HEADER.lower()} <= set(headers)
        assert _epoch_from_iso8601(headers["x-zendesk-webhook-signature-timestamp"]) == "1616648967"


class TestZendesk:
    def test_an_end_users_message_runs_the_agent_and_the_reply_is_called_back(
        self, client, zendesk_channel, platforms, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks() as queued:
            response = zendesk_post(client, zendesk_channel, end_user_message())
        assert (response.status_code, len(queued)) == (202, 1)
        message = Message.objects.get()
        assert (message.text, message.external_id, message.external_user_id) == (
            "Can I change my plan?", "01JQMQH83YNAKWSWJ8B1QH2NSD", "end-user-7")
        assert agent_run(message.id).status == "sent"
        [callback] = platforms.state.crm_callbacks
        body = json.loads(callback["body"])
        assert (body["reply_to"], body["message"]) == ("01JQMQH83YNAKWSWJ8B1QH2NSD", "Echo: Can I change my plan?")

    def test_the_docs_payload_from_the_answer_bot_is_not_answered(self, client, zendesk_channel):
        body = (FIXTURES / "zendesk/message_added.json").read_bytes()
        response = zendesk_post(client, zendesk_channel, body=body)
        assert (response.status_code, response.json()) == (200, {"status": "ignored"})
        assert not Message.objects.exists()

    def test_other_zendesk_events_are_acknowledged_and_ignored(self, client, zendesk_channel):
        event = {"type": "zen:event-type:user.active_changed", "id": "2b24ef10", "account_id": 1,
                 "detail": {"id": "6596848315901"}, "event": {"current": False, "previous": True}}
        assert zendesk_post(client, zendesk_channel, event).status_code == 200
        assert not Message.objects.exists()

    def test_a_trigger_webhook_body_is_mapped(self, client, zendesk_channel):
        body = {"ticket_id": "35436", "update_id": "u-77", "comment": "My invoice is wrong",
                "requester": {"id": 9001, "email": "ana@example.com"}}
        assert zendesk_post(client, zendesk_channel, body).status_code == 202
        message = Message.objects.get()
        assert (message.text, message.external_id, message.external_user_id) == ("My invoice is wrong", "u-77", "9001")

    def test_one_ticket_is_one_conversation_and_redeliveries_are_answered_once(self, client, zendesk_channel):
        zendesk_post(client, zendesk_channel, end_user_message(event_id="e1"))
        zendesk_post(client, zendesk_channel, end_user_message(event_id="e1"))
        zendesk_post(client, zendesk_channel, end_user_message(event_id="e2", text="and another"))
        assert Message.objects.count() == 2
        assert len({m.conversation_id for m in Message.objects.all()}) == 1

    def test_forged_stale_and_malformed_stamps_are_refused_and_audited(self, client, zendesk_channel):
        for kwargs, reason in (
            ({"secret": "guess"}, "signature_mismatch"),
            ({"timestamp": zendesk_timestamp(seconds_ago=3600)}, "timestamp_outside_window"),
            ({"timestamp": "not a time"}, "timestamp_malformed"),
            ({"timestamp": ""}, "timestamp_malformed"),
        ):
            response = zendesk_post(client, zendesk_channel, end_user_message(), **kwargs)
            assert_refused(response, 401, code="unauthenticated")
            # The second malformed stamp is the same refusal within the minute: in the request log only.
            assert_refusal_logged_and_audited(response, zendesk_channel, reason=reason,
                                              audited=kwargs != {"timestamp": ""})

    def test_malformed_bodies_are_a_400(self, client, zendesk_channel):
        assert_refused(zendesk_post(client, zendesk_channel, body=b"{not json"), 400, code="invalid_request")
        assert_refused(zendesk_post(client, zendesk_channel, body=b"[1, 2]"), 400, code="invalid_request")
        broken = end_user_message()
        del broken["event"]["message"]
        assert_refused(zendesk_post(client, zendesk_channel, broken), 400, code="invalid_request")
        assert_refused(zendesk_post(client, zendesk_channel, {"comment": "no ids"}), 400, code="invalid_request")
