"""The base of the gateway's async DRF views (``POST /api/v1/messages``, ``/v1/chat/completions``)."""
from __future__ import annotations

from adrf.views import APIView

from apps.connectors.models import channel_by_slug
from apps.core.client_ip import client_ip_for_request
from apps.quotas.iprules import check_ip_rules

API_CHANNEL_SLUG = "api"


class ApiIpRulesMixin:
    """The API channel's IP rules (and the global ones) before anything else DRF does for the
    request: a denied address is refused (403 ``ip_forbidden``) before its API key is even looked
    at, on every API view (messages, conversations, the OpenAI face, usage)."""

    def initial(self, request, *args, **kwargs):
        check_ip_rules(client_ip_for_request(request), channel=channel_by_slug(API_CHANNEL_SLUG, kind="api"))
        super().initial(request, *args, **kwargs)


class AsyncAPIView(ApiIpRulesMixin, APIView):
    """adrf's async view, behind the API channel's IP rules. Handlers await what they wait on and do
    their database work through ``database_sync_to_async``, in one call where they can."""
