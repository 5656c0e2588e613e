"""The message body's serializer: fields copied per instance, checks unchanged."""
from apps.conversations.serializers import MessageInSerializer


def test_each_instance_binds_its_own_copies_of_the_fields():
    first = MessageInSerializer(data={"message": 5, "wait": "soon"})
    second = MessageInSerializer(data={"message": "hello", "wait": 1.5, "metadata": {"k": "v"}})
    assert first.fields["message"] is not second.fields["message"]
    assert first.fields["message"].parent is first and second.fields["message"].parent is second
    assert MessageInSerializer._declared_fields["message"].parent is None  # the class's own stay unbound

    assert second.is_valid(), second.errors
    assert not first.is_valid()
    assert set(first.errors) == {"message", "wait"}
    assert second.validated_data == {"message": "hello", "wait": 1.5, "metadata": {"k": "v"}}


def test_limits_still_apply_on_the_copies(settings):
    too_long = MessageInSerializer(data={"message": "x" * (settings.GATEWAY_MAX_MESSAGE_CHARS + 1)})
    assert not too_long.is_valid() and "message" in too_long.errors
    negative = MessageInSerializer(data={"message": "x", "wait": -1})
    assert not negative.is_valid() and "wait" in negative.errors
    metadata = MessageInSerializer(data={"message": "x", "metadata": [1]})
    assert not metadata.is_valid() and "metadata" in metadata.errors
