"""Wire shapes of the messages API."""
from __future__ import annotations

from django.conf import settings
from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers, booleans and other non-strings instead of coercing."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class RejectUnknownFieldsMixin:
    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                {name: "Unknown field." for name in sorted(unknown)}
            )
        return attrs


class MessageInSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    message = StrictCharField(max_length=settings.GATEWAY_MAX_MESSAGE_CHARS)
    conversation_id = serializers.UUIDField(required=False)
    wait = StrictFloatField(
        required=False, min_value=0, max_value=settings.GATEWAY_API_WAIT_MAX_SECONDS,
        help_text="Seconds to wait for the reply (0/absent: answer 202 at once).",
    )
    metadata = serializers.DictField(required=False, default=dict)

    def validate_metadata(self, value):
        if len(str(value)) > 4096:
            raise serializers.ValidationError("Metadata is limited to 4 KB.")
        return value


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ReplySerializer(serializers.Serializer):
    message_id = serializers.UUIDField()
    message = serializers.CharField()
    model = serializers.CharField()
    usage = UsageSerializer()
    latency_ms = serializers.IntegerField(allow_null=True)


class MessageAcceptedSerializer(serializers.Serializer):
    message_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    status = serializers.CharField()


class MessageAnsweredSerializer(serializers.Serializer):
    message_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    reply = ReplySerializer()


class ConversationMessageSerializer(serializers.Serializer):
    message_id = serializers.UUIDField(source="id")
    direction = serializers.CharField()
    status = serializers.CharField()
    message = serializers.CharField(source="text")
    reply_to = serializers.UUIDField(source="reply_to_id", allow_null=True)
    model = serializers.CharField()
    usage = serializers.SerializerMethodField()
    latency_ms = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()

    def get_usage(self, obj) -> dict | None:
        if obj.total_tokens is None:
            return None
        return {
            "prompt_tokens": obj.prompt_tokens,
            "completion_tokens": obj.completion_tokens,
            "total_tokens": obj.total_tokens,
        }
