"""JSON calls to platform APIs that answer errors with a JSON body worth reading (Feishu, DingTalk).

``http.request_json`` turns every 4xx into a bare ConnectorError; Feishu and DingTalk put the
reason in the body of a 400/401 (an expired token, a rate limit), and the connector must read it
to decide between refreshing the token, retrying and giving up. ``call_json`` returns the status
and the decoded body (on httpx2, as ``request_json``); only a network failure or a body that is not JSON raises.
"""
from __future__ import annotations

import json
from typing import Any

import httpx2
from django.conf import settings

from apps.core.http import ConnectorError, host, retry_after

__all__ = ["call_json", "retry_after"]


def call_json(method: str, url: str, *, payload: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """(HTTP status, decoded JSON body or None, response headers); raises ConnectorError when the
    platform cannot be reached (transient) or does not answer JSON."""
    data = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else None
    try:
        response = httpx2.request(
            method, url, content=data,
            headers={**({"Content-Type": "application/json; charset=utf-8"} if data is not None else {}),
                     **(headers or {})},
            timeout=settings.CONNECTOR_HTTP_TIMEOUT_SECONDS,
            follow_redirects=method.upper() in ("GET", "HEAD"),
        )
    except httpx2.HTTPError as exc:  # refused, reset, DNS, TLS, timeouts, redirects
        raise ConnectorError(f"cannot reach {host(url)}: {type(exc).__name__}: {exc}") from exc
    status, raw = response.status_code, response.content
    answer_headers = dict(response.headers)
    if not raw:
        return status, None, answer_headers
    try:
        return status, json.loads(raw), answer_headers
    except ValueError as exc:
        transient = status == 429 or status >= 500
        raise ConnectorError(f"HTTP {status} from {host(url)} (not JSON)", permanent=not transient) from exc
