"""Request id on every HTTP request, and a RequestLog row for every request at an entry point."""
from __future__ import annotations

import json
import re
import time
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.functional import SimpleLazyObject, empty

from apps.core.client_ip import client_ip_for_request

from .request_log import request_log_record
from .structured import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# The entry points of the public contract (docs/architecture.md) → the channel kind when the path fixes it.
# Webhooks name their channel by slug in the URL; its kind is looked up when the row is written.
ENTRY_POINTS: tuple[tuple[str, str], ...] = (
    ("/api/v1/messages", "api"),
    ("/v1/chat/completions", "api"),
    ("/api/v1/channels/", ""),
)


def new_request_id(incoming: str | None = None) -> str:
    """The caller's id when it is a sane token (so its logs and ours join up), else a fresh one."""
    if incoming and _REQUEST_ID_RE.match(incoming):
        return incoming
    return uuid.uuid4().hex


def entry_point_kind(path: str) -> str | None:
    """The channel kind ("" when the URL names the channel) for an entry point path, else None."""
    for prefix, kind in ENTRY_POINTS:
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return kind
    return None


class RequestContextMiddleware:
    """Sets the request id (``X-Request-ID`` in, or generated; echoed on the response) for the
    logs of the whole request, and records entry-point requests in the request log."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        token, started = self._start(request)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        return self._finish(request, response, started)

    async def _acall(self, request):
        token, started = self._start(request)
        try:
            response = await self.get_response(request)
        finally:
            request_id_var.reset(token)
        # Recording does no I/O (metrics count in memory; the request-log row is batched to Redis by a thread).
        return self._finish(request, response, started)

    def _start(self, request):
        request.request_id = new_request_id(request.headers.get(REQUEST_ID_HEADER))
        return request_id_var.set(request.request_id), time.monotonic()

    def _finish(self, request, response, started: float):
        response[REQUEST_ID_HEADER] = request.request_id
        kind = entry_point_kind(request.path)
        if kind is not None:
            record_http_request(request, response, kind=kind, latency_ms=int((time.monotonic() - started) * 1000))
        return response


def record_http_request(request, response, *, kind: str, latency_ms: int) -> None:
    body = _json_body(response)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    match = getattr(request, "resolver_match", None)
    slug = (match.kwargs.get("slug", "") if match else "") or ("api" if kind == "api" else "")
    named = body.get("message_id") if isinstance(body.get("message_id"), str) else None
    request_log_record(
        status_code=response.status_code,
        rejection=str(error.get("code", "")) if response.status_code >= 400 else "",
        reason=getattr(response, "refusal_reason", "") if response.status_code >= 400 else "",
        channel_slug=slug,
        channel_kind=kind,
        user=_resolved_user(request),
        message=getattr(request, "accepted_message_id", None) or named,  # note_accepted_message, else the body
        api_key=getattr(getattr(request, "auth", None), "pk", None),
        client_ip=client_ip_for_request(request),
        latency_ms=latency_ms,
        request_id=request.request_id,
    )


def note_accepted_message(request, message_id) -> None:
    """For an entry point whose response does not name the message it accepted (the face's, streamed
    or not): the request log links the row to it. No I/O; ``request`` may be DRF's."""
    getattr(request, "_request", request).accepted_message_id = str(message_id)


def _json_body(response) -> dict:
    """The JSON body of a small JSON response (every gateway error is one), else {}."""
    if getattr(response, "streaming", False) or "json" not in response.get("Content-Type", ""):
        return {}
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _resolved_user(request):
    """The authenticated user, without triggering a session lookup nobody asked for."""
    user = request.__dict__.get("user")
    if isinstance(user, SimpleLazyObject):
        if user._wrapped is empty:
            return None
        user = user._wrapped
    return user if getattr(user, "is_authenticated", False) else None
