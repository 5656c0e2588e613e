"""The embeddable web chat: ``<script src="<gateway>/static/webchat/widget.js" data-chat="<slug>" async>``
on another site. The widget asks ``GET /chat/<slug>/widget-session`` for a visitor token; that
token is given only to the channel's listed origins (other sites get a readable refusal), and
the chat socket checks the same list against its Origin (``consumers.page_origin``)."""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.core.client_ip import client_ip_for_request
from apps.core.errors import GatewayError, error_response
from apps.quotas.iprules import check_ip_rules
from apps.quotas.limits import check_address_rate

from .models import channel_by_slug
from .visitors import visitor_token_issue


def embed_origin_allowed(origin: str, channel) -> bool:
    return bool(origin) and channel.embeddable_from(origin)


def _error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@csrf_exempt  # a cross-site GET that reads no cookie; any other method is a JSON 405 below
def widget_session(request, slug: str):
    """A new visitor token, under the same rules as the chat page that mints one: the channel's IP
    rules, and at most WEBCHAT_VISITORS_PER_IP_RATE new visitors per client address (429 past it;
    the page and the widget share the count)."""
    if request.method not in ("GET", "HEAD"):
        response = _error("method_not_allowed", "Ask for a visitor token with GET.", 405)
        response["Allow"] = "GET, HEAD"
        return response
    channel = channel_by_slug(slug, kind="webchat")
    if channel is None or not channel.enabled:
        return _error("not_found", "No such chat.", 404)
    origin = request.headers.get("Origin", "")
    client_ip = client_ip_for_request(request)
    try:
        check_ip_rules(client_ip, channel=channel)
        if not embed_origin_allowed(origin, channel):
            response = _error("forbidden", "This chat is not available on this site.", 403)
        elif not channel.allow_visitors:
            response = _error("forbidden", "This chat needs you to sign in on the gateway.", 403)
        else:
            check_address_rate("webchat_visitor", client_ip, settings.WEBCHAT_VISITORS_PER_IP_RATE, channel=channel)
            response = JsonResponse({"visitor_token": visitor_token_issue(channel), "chat": channel.slug,
                                     "title": channel.name})
    except GatewayError as error:
        response = error_response(error)
    if origin:  # refusals too: the widget on that site can then show the reason (no token in them)
        response["Access-Control-Allow-Origin"] = origin
    response["Vary"] = "Origin"
    response["Cache-Control"] = "no-store"
    return response
