"""JSON calls to platform APIs that answer errors with a JSON body worth reading (Feishu, DingTalk).

``http.request_json`` turns every 4xx into a bare ConnectorError; Feishu and DingTalk put the
reason in the body of a 400/401 (an expired token, a rate limit), and the connector must read it
to decide between refreshing the token, retrying and giving up. ``call_json`` returns the status
and the decoded body; only a network failure or a body that is not JSON raises.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings

from apps.core.http import ConnectorError


def call_json(method: str, url: str, *, payload: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """(HTTP status, decoded JSON body or None, response headers); raises ConnectorError when the
    platform cannot be reached (transient) or does not answer JSON."""
    data = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json; charset=utf-8"} if data is not None else {}), **(headers or {}),
    })
    try:
        with urllib.request.urlopen(req, timeout=settings.CONNECTOR_HTTP_TIMEOUT_SECONDS) as response:
            status, raw, answer_headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, answer_headers = exc.code, exc.read(), dict(exc.headers or {})
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise ConnectorError(f"cannot reach {host(url)}: {exc}") from exc
    if not raw:
        return status, None, answer_headers
    try:
        return status, json.loads(raw), answer_headers
    except ValueError as exc:
        transient = status == 429 or status >= 500
        raise ConnectorError(f"HTTP {status} from {host(url)} (not JSON)", permanent=not transient) from exc


def retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def host(url: str) -> str:
    # Errors are logged and shown in the admin: never include paths or query strings (tokens, sessions).
    return urllib.parse.urlsplit(url).netloc
