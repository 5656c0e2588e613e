"""``GET|POST /api/v1/channels/<slug>/webhook``: one entry point for every webhook connector.

It reads the raw body (size-limited, content type checked), finds the channel and hands the
request to its connector, which verifies, parses and feeds the pipeline. Every refusal is a
``{"error": {...}}`` 4xx; nothing here calls a model.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.views.decorators.csrf import csrf_exempt

from apps.core.client_ip import client_ip_for_request
from apps.core.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
    outage_error,
)
from apps.quotas.iprules import check_ip_rules
from gateway_project.db import database_sync_to_async
from gateway_project.json_limits import TooDeep, check_depth

from .base import WebhookRequest
from .models import channel_by_slug

logger = logging.getLogger(__name__)


class MethodNotAllowed(GatewayError):
    code = "method_not_allowed"
    status = 405
    default_message = "Use GET (URL verification) or POST."

    def headers(self) -> dict[str, str]:
        return {"Allow": "GET, POST"}


@csrf_exempt
async def channel_webhook(request, slug: str):
    # The work is sync (ORM, Celery): on the loop's shared thread pool, not on a thread Django
    # would make for this request alone (see gateway_project.db.database_sync_to_async).
    return await _channel_webhook(request, slug)


@database_sync_to_async
def _channel_webhook(request, slug: str):
    try:
        if request.method not in ("GET", "POST"):
            raise MethodNotAllowed()
        channel = channel_by_slug(slug)
        connector = channel.connector if channel is not None and channel.enabled else None
        if connector is None or not connector.webhook:
            raise NotFound("No such webhook channel.")
        check_ip_rules(client_ip_for_request(request), channel=channel)  # before the body is read
        try:
            return connector.handle_webhook(read_webhook_request(request, connector))
        except RecursionError:
            # JSON nested inside another encoding (a form field) that the depth check cannot see.
            raise BadRequest("The payload nests too deeply.") from None
    except GatewayError as error:
        logger.info("webhook refused", extra={"channel": slug, "code": error.code, "status": error.status})
        return error_response(error)
    except Exception as exc:
        # PostgreSQL or Redis away: 503 + Retry-After, so the platform redelivers later.
        if (outage := outage_error(exc)) is None:
            raise
        return error_response(outage)


def read_webhook_request(request, connector) -> WebhookRequest:
    """The request as the connector sees it; raises 413/415 before the body is parsed."""
    body = b""
    if request.method == "POST":
        limit = settings.CONNECTOR_WEBHOOK_MAX_BODY_BYTES
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type not in connector.content_types:
            raise UnsupportedMediaType(f"Send the body as {' or '.join(connector.content_types)}.")
        body = request.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        if content_type.endswith("json"):
            try:
                check_depth(body)  # before any connector parses it
            except TooDeep as exc:
                raise BadRequest(str(exc)) from None
    headers = {name.lower(): value for name, value in request.headers.items()}
    return WebhookRequest(
        method=request.method, headers=headers, query=request.GET.dict(), body=body,
        client_ip=client_ip_for_request(request), url=request.build_absolute_uri(),
    )
