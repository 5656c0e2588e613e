"""The base of the gateway's async DRF views (``POST /api/v1/messages``, ``/v1/chat/completions``)."""
from __future__ import annotations

import inspect

from adrf.views import APIView
from django.core.handlers.asgi import ASGIRequest

from apps.connectors.models import channel_by_slug
from apps.core.client_ip import client_ip_for_request
from apps.identities.access import check_key_channel_scope
from apps.quotas.iprules import check_ip_rules
from gateway_project.db import database_sync_to_async
from gateway_project.plain import is_plain

API_CHANNEL_SLUG = "api"


class ApiIpRulesMixin:
    """The API channel's IP rules (and the global ones) before anything else DRF does for the
    request: a denied address is refused (403 ``ip_forbidden``) before its API key is even looked
    at, on every API view (messages, conversations, the OpenAI face, usage). Then, once the key is
    known, its channel scope: a key limited to other channels is refused (403)."""

    def initial(self, request, *args, **kwargs):
        channel = channel_by_slug(API_CHANNEL_SLUG, kind="api")
        check_ip_rules(client_ip_for_request(request), channel=channel)
        super().initial(request, *args, **kwargs)
        if channel is not None:  # a key limited to other channels: refused on every endpoint, reads included
            check_key_channel_scope(user=request.user, channel=channel, api_key=request.auth,
                                    client_ip=client_ip_for_request(request))


class AsyncAPIView(ApiIpRulesMixin, APIView):
    """adrf's async view, with DRF's ``initial`` (authentication, permissions, throttles) run on the
    event loop's shared thread pool (``database_sync_to_async``) instead of a thread made for the
    request, and the response rendered on the loop. Views do their own database work the same way,
    in one call where they can."""

    async def async_dispatch(self, request, *args, **kwargs):
        if is_plain("adrf_dispatch"):
            return await super().async_dispatch(request, *args, **kwargs)
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await database_sync_to_async(self.initial)(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            handler = handler or self.http_method_not_allowed
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, *args, **kwargs)
            else:
                response = await database_sync_to_async(handler)(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        if isinstance(request._request, ASGIRequest) and callable(getattr(self.response, "render", None)):
            # Rendering JSON does no I/O: render here, on the loop, and hand Django an async render
            # (a sync one it would run on a thread made for the request, just to render).
            rendered = self.response.render()

            async def render():
                return rendered

            rendered.render = render
        return self.response
