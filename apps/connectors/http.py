"""Plain JSON over HTTP for connectors without a client library (WeCom, CRM callbacks), on httpx2
(the httpx line the openai client uses).

Every failure becomes a ConnectorError that says whether retrying can help: network errors
and timeouts, 429 and 5xx are transient (with the server's Retry-After), other 4xx and a
redirect that is not followed are permanent. Redirects are followed for GET only: a POST's body
is never sent on to another address.
"""
from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx2
from django.conf import settings

from .base import ConnectorError


def request_json(method: str, url: str, *, payload: Any = None, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Any:
    """Send one request and return the decoded JSON answer; raises ConnectorError."""
    data = body if body is not None else (json.dumps(payload).encode() if payload is not None else None)
    try:
        response = httpx2.request(
            method, url, content=data,
            headers={**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})},
            timeout=settings.CONNECTOR_HTTP_TIMEOUT_SECONDS,
            follow_redirects=method.upper() in ("GET", "HEAD"),
        )
    except httpx2.TransportError as exc:  # refused, reset, DNS, TLS, timeouts
        raise ConnectorError(f"cannot reach {_host(url)}: {type(exc).__name__}: {exc}") from exc
    except httpx2.TooManyRedirects as exc:
        raise ConnectorError(f"too many redirects from {_host(url)}", permanent=True) from exc
    status = response.status_code
    if status >= 300:
        transient = status == 429 or status >= 500
        raise ConnectorError(f"HTTP {status} from {_host(url)}", permanent=not transient,
                             retry_after=_seconds(response.headers.get("Retry-After")))
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise ConnectorError(f"{_host(url)} answered with something that is not JSON") from exc


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _host(url: str) -> str:
    # Errors are logged and shown in the admin: never include query strings (tokens, keys).
    return urllib.parse.urlsplit(url).netloc
