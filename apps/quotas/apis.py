"""``GET /api/v1/usage``: the caller's own usage and limits."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.conversations.apis import ErrorSerializer
from apps.conversations.async_api import ApiIpRulesMixin

from .selectors import usage_for_caller

_Totals = inline_serializer("UsageTotals", {
    "calls": serializers.IntegerField(), "prompt_tokens": serializers.IntegerField(),
    "completion_tokens": serializers.IntegerField(), "total_tokens": serializers.IntegerField(),
    "cost": serializers.DecimalField(max_digits=16, decimal_places=6, help_text="In the model prices' currency."),
})
_Usage = inline_serializer("UsagePeriods", {"today": _Totals, "this_month": _Totals})
UsageSerializer = inline_serializer("Usage", {
    "user_id": serializers.UUIDField(),
    "role": serializers.CharField(),
    "rates": inline_serializer("RateState", {
        "scope": serializers.ChoiceField(["user", "api_key"]),
        "rate": serializers.CharField(help_text="e.g. 20/m"),
        "source": serializers.CharField(help_text="Which policy or setting gives this limit."),
        "used": serializers.IntegerField(allow_null=True, help_text="Requests counted in the current window."),
        "remaining": serializers.IntegerField(allow_null=True),
        "resets_in": serializers.IntegerField(allow_null=True, help_text="Seconds until the window ends."),
    }, many=True),
    "budgets": inline_serializer("BudgetState", {
        "scope": serializers.ChoiceField(["user", "api_key"]),
        "meter": serializers.ChoiceField(["tokens", "cost"]),
        "period": serializers.ChoiceField(["day", "month"]),
        "limit": serializers.CharField(help_text="Tokens (integer) or money (decimal string)."),
        "used": serializers.CharField(), "reserved": serializers.CharField(help_text="Held by calls in flight."),
        "remaining": serializers.CharField(), "exhausted": serializers.BooleanField(),
        "resets_at": serializers.DateTimeField(), "source": serializers.CharField(),
    }, many=True),
    "usage": _Usage,
    "api_key": inline_serializer("ApiKeyUsage", {"prefix": serializers.CharField(), "usage": _Usage},
                                 required=False),
})


class UsageApi(ApiIpRulesMixin, APIView):
    """Your own usage (today, this month) and every limit that applies to you and this API key."""

    @extend_schema(responses={200: UsageSerializer, 401: OpenApiResponse(ErrorSerializer)})
    def get(self, request):
        return Response(usage_for_caller(user=request.user, api_key=request.auth))
