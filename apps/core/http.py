"""The outbound HTTP client and its retry policy: every call the gateway makes to a platform.

- ``ConnectorError``: an outbound call failed; it says whether retrying can help (``permanent``)
  and how long the platform asked to wait (``retry_after``).
- ``request_json``: plain JSON over HTTP for platforms without a client library (WeCom, CRM
  callbacks), on httpx2 (the httpx line the openai client uses). Network errors and timeouts, 429
  and 5xx are transient (with the server's Retry-After); other 4xx and a redirect that is not
  followed are permanent. Redirects are followed for GET only: a POST's body is never sent on to
  another address.
- ``send_with_retries``: the one place that retries a delivery (tenacity).
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import httpx2
from django.conf import settings
from tenacity import RetryCallState, Retrying, stop_after_attempt

logger = logging.getLogger(__name__)


class ConnectorError(Exception):
    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


def request_json(method: str, url: str, *, payload: Any = None, body: bytes | None = None,
                 headers: dict[str, str] | None = None, answer_json: bool = True) -> Any:
    """Send one request and return the decoded JSON answer (``answer_json=False``: any answer of a
    status below 300 is success, returns None); raises ConnectorError."""
    data = body if body is not None else (json.dumps(payload).encode() if payload is not None else None)
    try:
        response = httpx2.request(
            method, url, content=data,
            headers={**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})},
            timeout=settings.CONNECTOR_HTTP_TIMEOUT_SECONDS,
            follow_redirects=method.upper() in ("GET", "HEAD"),
        )
    except httpx2.TransportError as exc:  # refused, reset, DNS, TLS, timeouts
        raise ConnectorError(f"cannot reach {host(url)}: {type(exc).__name__}: {exc}") from exc
    except (httpx2.InvalidURL, UnicodeError) as exc:  # refused before sending, e.g. a host IDNA cannot encode
        raise ConnectorError(f"cannot send to {host(url)}: invalid URL or header ({type(exc).__name__})",
                             permanent=True) from exc
    except httpx2.TooManyRedirects as exc:
        raise ConnectorError(f"too many redirects from {host(url)}", permanent=True) from exc
    status = response.status_code
    if status >= 300:
        transient = status == 429 or status >= 500
        raise ConnectorError(f"HTTP {status} from {host(url)}", permanent=not transient,
                             retry_after=retry_after(response.headers))
    if not response.content or not answer_json:
        return None
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise ConnectorError(f"{host(url)} answered with something that is not JSON") from exc


def retry_after(headers) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number; a date or garbage: None)."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def host(url: str) -> str:
    # Errors are logged and shown in the admin: never include query strings (tokens, keys), nor a
    # user and password written in the URL (https://user:password@host/).
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


# --- outbound retries: the one place ------------------------------------------------------


def send_with_retries(send, *, what: str = "reply") -> int:
    """Call ``send()`` until it succeeds; returns the number of attempts.

    Transient ConnectorErrors are retried with exponential backoff
    (CONNECTOR_SEND_BACKOFF_SECONDS × 2^n), waiting at least the platform's Retry-After.
    Raises the last ConnectorError when it is permanent, when CONNECTOR_SEND_ATTEMPTS are used
    up, or when the platform asks to wait longer than CONNECTOR_SEND_MAX_WAIT_SECONDS.
    Any other exception goes straight through.
    """
    backoff = settings.CONNECTOR_SEND_BACKOFF_SECONDS
    max_wait = settings.CONNECTOR_SEND_MAX_WAIT_SECONDS

    def wait(state: RetryCallState) -> float:  # the platform's Retry-After, or more
        error = state.outcome.exception()
        return max(error.retry_after or 0.0, backoff * 2 ** (state.attempt_number - 1))

    def worth_retrying(state: RetryCallState) -> bool:
        error = state.outcome.exception()
        return isinstance(error, ConnectorError) and not error.permanent and wait(state) <= max_wait

    def log_retry(state: RetryCallState) -> None:
        logger.warning("send failed, retrying", extra={
            "what": what, "attempt": state.attempt_number, "wait_seconds": state.next_action.sleep,
            "error": str(state.outcome.exception()),
        })

    retrying = Retrying(stop=stop_after_attempt(settings.CONNECTOR_SEND_ATTEMPTS), wait=wait,
                        retry=worth_retrying, before_sleep=log_retry, reraise=True)
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        send()

    try:
        retrying(attempt)
    except ConnectorError as exc:
        exc.attempts = attempts
        raise
    return attempts
