"""Links that make the admin, the dashboards, the inbox, the API docs and the web chats one product."""
from __future__ import annotations

from django import template
from django.urls import NoReverseMatch, reverse

from apps.connectors.models import Channel

register = template.Library()


def _url(name: str, *args) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:  # a part not installed in this deployment
        return None


@register.simple_tag
def gateway_links(chats: bool = True) -> list[dict]:
    """[{"label", "url"}]: the staff tools, then (``chats``) one link per enabled web chat."""
    links = [
        {"label": "Admin", "url": _url("admin:index")},
        {"label": "Dashboards", "url": _url("dashboard-overview")},
        {"label": "Handoff inbox", "url": _url("console-inbox")},
        {"label": "API docs", "url": _url("api-docs")},
    ]
    webchats = Channel.objects.filter(kind="webchat", enabled=True).order_by("slug").values_list("slug", "name")
    for slug, name in (webchats if chats else []):
        links.append({"label": f"Web chat: {name}", "url": _url("chat-page", slug)})
    return [link for link in links if link["url"]]
