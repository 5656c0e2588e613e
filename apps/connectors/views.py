"""The web chat page."""
from __future__ import annotations

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .models import channel_by_slug
from .visitors import visitor_token_issue


@require_GET
def chat_page(request, slug: str):
    channel = channel_by_slug(slug, kind="webchat")
    if channel is None or not channel.enabled:
        raise Http404("No such chat.")
    signed_in = request.user.is_authenticated
    return render(request, "chat.html", {
        "channel": channel,
        "visitor_token": "" if signed_in or not channel.allow_visitors else visitor_token_issue(channel),
        "signed_in_as": request.user.get_username() if signed_in else "",
    })
