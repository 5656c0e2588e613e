"""Platforms' published source ranges, for restricting a webhook channel to its platform.

WeCom publishes the addresses its callbacks come from (``GET /cgi-bin/getcallbackip``, with the
app's access token; the ranges change, so refresh them daily). Other kinds have no such API
here: enter their ranges with ``ip_allowlist --cidr`` or in the admin.
"""
from __future__ import annotations

import urllib.parse

from django.conf import settings

from apps.core.http import ConnectorError, request_json

WECOM_TOKEN_INVALID = {40014, 42001}


class NoPublishedRanges(Exception):
    pass


def published_ranges(channel) -> list[str]:
    """The CIDRs the channel's platform says its requests come from; raises NoPublishedRanges."""
    fetch = {"wecom": _wecom_callback_ips}.get(channel.kind)
    if fetch is None:
        raise NoPublishedRanges(f"{channel.kind} channels have no published-ranges API here; "
                                "enter the ranges with --cidr or in the admin.")
    return fetch(channel)


def _wecom_callback_ips(channel) -> list[str]:
    connector = channel.connector
    for refresh in (False, True):
        token = connector.access_token(refresh=refresh)
        url = f"{settings.WECOM_API_BASE_URL.rstrip('/')}/getcallbackip?access_token={urllib.parse.quote(token)}"
        data = request_json("GET", url)
        errcode = data.get("errcode", 0) if isinstance(data, dict) else -1
        if errcode == 0 and isinstance(data.get("ip_list"), list):
            return [str(ip) for ip in data["ip_list"]]
        if errcode not in WECOM_TOKEN_INVALID:
            break
    raise ConnectorError(f"getcallbackip: errcode {errcode}", permanent=True)
