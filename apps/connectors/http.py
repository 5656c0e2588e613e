"""Plain JSON over HTTP for connectors without a client library (WeCom, CRM callbacks).

Every failure becomes a ConnectorError that says whether retrying can help: network errors,
429 and 5xx are transient (with the server's Retry-After), other 4xx are permanent.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings

from .base import ConnectorError


def request_json(method: str, url: str, *, payload: Any = None, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Any:
    """Send one request and return the decoded JSON answer; raises ConnectorError."""
    data = body if body is not None else (json.dumps(payload).encode() if payload is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {}),
    })
    try:
        with urllib.request.urlopen(req, timeout=settings.CONNECTOR_HTTP_TIMEOUT_SECONDS) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        status = exc.code
        retry_after = _seconds(exc.headers.get("Retry-After"))
        transient = status == 429 or status >= 500
        raise ConnectorError(f"HTTP {status} from {_host(url)}", permanent=not transient,
                             retry_after=retry_after) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise ConnectorError(f"cannot reach {_host(url)}: {exc}") from exc
    if not raw:
        return None
    try:
        return json.loads(raw)
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
