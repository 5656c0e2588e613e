"""Which message a request-log row points at: the one its request accepted, never another user's.

The row's admin page shows the linked message's text to staff; a client chooses its X-Request-ID,
so an id reused from another user's request must not link that user's message."""
import pytest
from rest_framework.test import APIClient

from apps.conversations.models import Direction, Message
from apps.logs.models import RequestLog
from apps.logs.request_log import request_log_flush, request_log_record
from tests.helpers import send

pytestmark = pytest.mark.django_db

FACE = "/v1/chat/completions"


@pytest.fixture
def client_for(api_key_for):
    def make(user, ip):
        client = APIClient(REMOTE_ADDR=ip)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(user)}")
        return client
    return make


def completion(text: str, **fields) -> dict:
    return {"model": "assistant", "messages": [{"role": "user", "content": text}], **fields}


def own_message(user) -> Message:
    return Message.objects.get(sender=user, direction=Direction.INBOUND)


# The test client reads the stream's async generator synchronously, as Django warns it does.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_a_face_request_reusing_another_users_request_id_links_its_own_message(
    client_for, make_user, api_channel, settings
):
    settings.GATEWAY_OPENAI_REPLY_TIMEOUT_SECONDS = 0.05  # nobody runs the agent: the stream ends soon
    victim, attacker = make_user(), make_user()
    accepted = client_for(victim, "192.0.2.1").post(
        "/api/v1/messages", {"message": "the victim's private text"}, format="json", HTTP_X_REQUEST_ID="trace-0001")
    assert accepted.status_code == 202
    streamed = client_for(attacker, "192.0.2.2").post(
        FACE, completion("the attacker's", stream=True), format="json", HTTP_X_REQUEST_ID="trace-0001")
    assert streamed.status_code == 200
    assert b"reply_timeout" in b"".join(streamed)  # read to its end: the stream lets go of its waiter
    request_log_flush()
    rows = {row.user_id: row for row in RequestLog.objects.all()}
    assert str(rows[victim.pk].message_id) == accepted.json()["message_id"]
    assert rows[attacker.pk].message_id == own_message(attacker).pk  # not the victim's


def test_a_face_request_that_is_not_streamed_links_its_message_even_when_it_times_out(
    client_for, customer, api_channel, settings
):
    """The id is noted when the message is accepted, so a refusal after that (here the wait for the
    reply, nobody runs the agent) still names it, as the messages API's error body does."""
    settings.GATEWAY_OPENAI_REPLY_TIMEOUT_SECONDS = 0.05
    response = client_for(customer, "192.0.2.3").post(FACE, completion("hi"), format="json")
    assert response.status_code == 504
    request_log_flush()
    row = RequestLog.objects.get()
    assert (row.user_id, row.message_id, row.rejection) == (customer.pk, own_message(customer).pk, "reply_timeout")


def test_the_request_id_links_no_message_of_another_sender(make_user, api_channel):
    """A row naming a user is linked through its request id only to that user's message; a row naming
    none (a webhook's, the platform's signed request) takes the message's sender."""
    from apps.logs.structured import request_id_var

    victim, attacker = make_user(), make_user()
    token = request_id_var.set("shared-req-1")
    try:
        victims = send(api_channel, victim, "the victim's private text")
    finally:
        request_id_var.reset(token)
    request_log_record(status_code=200, channel_slug="api", user=attacker, request_id="shared-req-1")
    request_log_record(status_code=200, channel_slug="api", user=victim, request_id="shared-req-1")
    request_log_record(status_code=200, channel_slug="api", request_id="shared-req-1")
    request_log_flush()
    links = sorted((str(row.user_id), str(row.message_id)) for row in RequestLog.objects.all())
    assert links == sorted([(str(attacker.pk), "None"), (str(victim.pk), str(victims.pk)),
                            (str(victim.pk), str(victims.pk))])
