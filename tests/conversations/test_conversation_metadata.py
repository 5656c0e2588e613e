"""A conversation's metadata is a JSON object: routing rules read it as key → value."""
import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from apps.conversations.models import Conversation

pytestmark = pytest.mark.django_db


def test_a_list_is_refused_and_one_stored_before_breaks_no_message(api_channel, customer, api_key_for):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(customer)}")
    first = client.post("/api/v1/messages", {"message": "hello"}, format="json")
    conversation = Conversation.objects.get(pk=first.json()["conversation_id"])
    conversation.metadata = [1]
    with pytest.raises(ValidationError) as refused:
        conversation.full_clean()  # as the admin's form does
    assert "metadata" in refused.value.message_dict
    conversation.save()  # a row written before the rule
    again = client.post("/api/v1/messages", {"message": "still here", "conversation_id": str(conversation.pk)},
                        format="json")
    assert again.status_code == 202, again.content
