"""The gateway's one error type and its wire forms.

Every step that refuses a message raises a ``GatewayError`` subclass. Each entry point turns it into
its own form: ``error_body()`` for HTTP JSON, ``error_frame()`` for the web chat, ``user_text`` for a
channel reply. ``message`` is always safe to show to the sender.
"""
from __future__ import annotations

import logging

from django.http import JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    code = "error"
    status = 400
    default_message = "The request could not be handled."

    def __init__(self, message: str | None = None, *, retry_after: int | None = None, reason: str = ""):
        self.message = message or self.default_message
        self.retry_after = retry_after
        # Why, for the request log and the audit trail only (e.g. "signature_mismatch" against
        # "timestamp_outside_window": a forgery against a replay); the client sees ``code``.
        self.reason = reason
        super().__init__(self.message)

    def error_body(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        return {"error": error}

    def error_frame(self) -> dict:
        return {"type": "error", **self.error_body()["error"]}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BadRequest(GatewayError):
    code = "invalid_request"
    status = 400
    default_message = "The request is malformed."


class Unauthenticated(GatewayError):
    code = "unauthenticated"
    status = 401
    default_message = "A valid API key is required."


class Forbidden(GatewayError):
    code = "forbidden"
    status = 403
    default_message = "You are not allowed to do this."


class NotFound(GatewayError):
    code = "not_found"
    status = 404
    default_message = "Not found."


class AgentUnavailable(NotFound):
    """An agent asked for by name (the face's ``model``) that does not exist, or that the sender or
    their API key may not use: one answer for all three, so agent names are not disclosed."""

    def __init__(self, requested: str):
        super().__init__(f"No assistant named {str(requested)[:64]!r} is available to you.")


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"
    status = 413
    default_message = "The request body is too large."


class UnsupportedMediaType(GatewayError):
    code = "unsupported_media_type"
    status = 415
    default_message = "The request body must be JSON (Content-Type: application/json)."


class RateLimited(GatewayError):
    code = "rate_limited"
    status = 429
    default_message = "Too many requests; slow down."


class QuotaExceeded(GatewayError):
    """A token or cost budget is used up; ``retry_after`` is the seconds until it resets."""

    code = "quota_exceeded"
    status = 429
    default_message = "Your usage quota is used up for now."


class IpForbidden(GatewayError):
    code = "ip_forbidden"
    status = 403
    default_message = "Requests from your network address are not allowed here."


class ChannelDisabled(GatewayError):
    code = "channel_disabled"
    status = 403
    default_message = "This channel is not accepting messages."


class ChannelMisconfigured(GatewayError):
    """A channel's config or secrets do not fit its kind: raised by its connector, caught by the
    agent run's delivery (which does not import connectors)."""

    code = "channel_misconfigured"
    status = 503
    default_message = "This channel is not configured correctly."


class NoRoute(GatewayError):
    code = "no_agent"
    status = 503
    default_message = "No agent is available for this message."


class ReplyTimeout(GatewayError):
    code = "reply_timeout"
    status = 504
    default_message = "The reply did not arrive in time; it will still land in the conversation."


class AgentFailed(GatewayError):
    code = "agent_failed"
    status = 502
    default_message = "The assistant could not answer right now. Please try again."


class AnswerReplaced(GatewayError):
    """Text of an agent's answer was streamed, then a person who took the conversation over
    answered the message instead; streamed text cannot be taken back (SSE)."""

    code = "answer_replaced"
    status = 409
    default_message = "A person answered this message instead of the assistant: the text streamed so far is void."


class InternalError(GatewayError):
    """A bug or an unforeseen failure (logged with its traceback); the client is told no more."""

    code = "internal_error"
    status = 500
    default_message = "Something went wrong on our side; please try again."


class ServiceUnavailable(GatewayError):
    code = "service_unavailable"
    status = 503
    default_message = "The gateway is temporarily unavailable; retry shortly."


class LLMError(Exception):
    """A model call that produced no usable answer. ``retryable``: worth another attempt.

    Here, not in ``apps.agents.llm``, because a refusal raised below the agents (the quotas' budget
    refusal) is one of these: the run handles both alike.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None):
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after  # seconds the provider asked us to wait (Retry-After)
        super().__init__(f"{code}: {message}")


def outage_error(exc: BaseException) -> ServiceUnavailable | None:
    """A ServiceUnavailable (503, retry_after) if ``exc`` means PostgreSQL or Redis is unreachable.

    An outage is not the client's fault and not a bug: the client should retry, so it gets a
    retryable status instead of a 500.
    """
    from django.conf import settings
    from django.db import InterfaceError, OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, OperationalError | InterfaceError | RedisConnectionError | RedisTimeoutError):
        logger.warning("dependency outage", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
        return ServiceUnavailable(retry_after=settings.GATEWAY_OUTAGE_RETRY_AFTER_SECONDS)
    return None


def error_from_event(event: dict) -> GatewayError:
    """The error an ``agent.error`` channel-layer event stands for (what a waiting client gets)."""
    if event.get("code") == QuotaExceeded.code:
        return QuotaExceeded(event.get("message"), retry_after=event.get("retry_after"))
    return AgentFailed(event.get("message"))


def error_response(error: GatewayError) -> JsonResponse:
    response = JsonResponse(error.error_body(), status=error.status, headers=error.headers())
    response.refusal_reason = error.reason  # read by the request log (apps.logs.middleware)
    return response


_DRF_TO_GATEWAY = {
    drf_exceptions.ParseError: BadRequest,
    drf_exceptions.NotAuthenticated: Unauthenticated,
    drf_exceptions.AuthenticationFailed: Unauthenticated,
    drf_exceptions.PermissionDenied: Forbidden,
    drf_exceptions.NotFound: NotFound,
    drf_exceptions.UnsupportedMediaType: UnsupportedMediaType,
}


def drf_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every API error in the gateway's ``{"error": {...}}`` shape."""
    from django.core.exceptions import RequestDataTooBig
    from django.http import Http404

    if (outage := outage_error(exc)) is not None:
        exc = outage
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, Http404):
        exc = NotFound()
    if isinstance(exc, drf_exceptions.ValidationError):
        exc = BadRequest(validation_message(exc.detail))
    elif isinstance(exc, drf_exceptions.Throttled):
        exc = RateLimited(retry_after=int(exc.wait or 1))
    elif isinstance(exc, drf_exceptions.MethodNotAllowed):
        error = GatewayError(str(exc.detail))
        error.code, error.status = "method_not_allowed", 405
        exc = error
    elif isinstance(exc, drf_exceptions.APIException):
        mapped = next((g for d, g in _DRF_TO_GATEWAY.items() if isinstance(exc, d)), None)
        if mapped is None:
            error = GatewayError(str(exc.detail))
            error.status = exc.status_code
            exc = error
        else:
            exc = mapped(str(exc.detail))
    if isinstance(exc, GatewayError):
        return Response(exc.error_body(), status=exc.status, headers=exc.headers())
    return None


def validation_message(detail) -> str:
    """Flatten DRF validation detail into one readable sentence: ``field: problem; ...``."""
    if isinstance(detail, dict):
        parts = []
        for field, problems in detail.items():
            text = validation_message(problems)
            parts.append(text if field == "non_field_errors" else f"{field}: {text}")
        return "; ".join(parts)
    if isinstance(detail, list):
        return " ".join(validation_message(item) for item in detail)
    return str(detail)
