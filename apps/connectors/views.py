"""The web chat page."""
from __future__ import annotations

from django.conf import settings
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.core.client_ip import client_ip_for_request
from apps.core.errors import GatewayError, Unauthenticated, error_response
from apps.quotas.iprules import check_ip_rules
from apps.quotas.limits import check_address_rate

from .models import channel_by_slug
from .visitors import visitor_token_issue, visitor_token_read


def visitor_cookie_name(channel) -> str:
    return f"gw_visitor_{channel.slug}"


@require_GET
def chat_page(request, slug: str):
    """The chat page. An anonymous reader gets a visitor token: the one its browser already holds
    for this chat (a cookie), else a new one, minted at most WEBCHAT_VISITORS_PER_IP_RATE times per
    client address (429 past it)."""
    channel = channel_by_slug(slug, kind="webchat")
    if channel is None or not channel.enabled:
        raise Http404("No such chat.")
    signed_in = request.user.is_authenticated
    token = ""
    if not signed_in and channel.allow_visitors:
        client_ip = client_ip_for_request(request)
        try:
            check_ip_rules(client_ip, channel=channel)
            token = _held_token(request, channel)
            if not token:
                check_address_rate("webchat_visitor", client_ip, settings.WEBCHAT_VISITORS_PER_IP_RATE, channel=channel)
                token = visitor_token_issue(channel)
        except GatewayError as error:
            return error_response(error)
    response = render(request, "chat.html", {
        "channel": channel,
        "visitor_token": token,
        "signed_in_as": request.user.get_username() if signed_in else "",
    })
    if token:
        response.set_cookie(visitor_cookie_name(channel), token, max_age=settings.WEBCHAT_VISITOR_TOKEN_MAX_AGE_SECONDS,
                            httponly=True, samesite="Lax", secure=request.is_secure())
    return response


def _held_token(request, channel) -> str:
    """The visitor token this browser keeps for ``channel``, if still valid."""
    token = request.COOKIES.get(visitor_cookie_name(channel), "")
    if not token:
        return ""
    try:
        visitor_token_read(token, channel)
    except Unauthenticated:
        return ""
    return token
