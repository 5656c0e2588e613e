"""Slack (Events API in, ``chat.postMessage`` out).

In: ``X-Slack-Signature`` = ``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{raw body}`` with the
signing secret, over the raw bytes (not slack_sdk's verifier: it decodes the body and compares
str, and raises on bytes that are not UTF-8 or a non-ASCII signature), timestamps older than
CONNECTOR_SIGNATURE_MAX_AGE_SECONDS refused; ``url_verification`` answered with its challenge;
``message`` / ``app_mention`` events become messages, anything from a bot (ours included) or with
a subtype is dropped. The dedupe key is the Slack message itself (``channel:ts``), so a retried
event (``X-Slack-Retry-Num``) and the ``message`` + ``app_mention`` pair Slack sends for one
mention run the agent once.
Out: the bot token posts into the thread (``thread_ts`` = the thread's root) through slack_sdk's
WebClient at SLACK_API_BASE_URL.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from django.conf import settings
from django.http import JsonResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError

from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import BadRequest, GatewayError
from apps.core.http import ConnectorError
from gateway_project.json_limits import loads_bounded

from .base import (
    Connector,
    WebhookRequest,
    WebhookResult,
    check_timestamp,
    hmac_sha256_hex,
    parse_epoch,
    require_signature,
)

logger = logging.getLogger(__name__)

# Slack errors worth another try; every other ``ok: false`` is permanent (bad token, channel...).
TRANSIENT_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
MESSAGE_EVENTS = {"message", "app_mention"}


@dataclass(frozen=True)
class SlackConfig:
    signing_secret: str
    bot_token: str
    bot_user_id: str = ""  # our bot's user id (U...): its messages are never answered

    def __post_init__(self):
        if not self.bot_token.startswith("xox"):
            raise ValueError("bot_token: a Slack bot token starts with xoxb-.")


class SlackConnector(Connector):
    kind = "slack"
    Config = SlackConfig
    webhook = True
    content_types = ("application/json",)

    def verify(self, request: WebhookRequest) -> None:
        timestamp = request.header("X-Slack-Request-Timestamp")
        check_timestamp(timestamp)
        expected = "v0=" + hmac_sha256_hex(self.conf.signing_secret, b"v0:" + timestamp.encode() + b":" + request.body)
        require_signature(expected, request.header("X-Slack-Signature"))

    def parse(self, request: WebhookRequest) -> WebhookResult:
        try:
            payload = loads_bounded(request.body)
        except ValueError as exc:
            raise BadRequest("The body is not valid JSON.") from exc
        if not isinstance(payload, dict):
            raise BadRequest("The body must be a JSON object.")
        if payload.get("type") == "url_verification":
            return WebhookResult(response=JsonResponse({"challenge": str(payload.get("challenge", ""))}))
        if payload.get("type") != "event_callback" or not isinstance(payload.get("event"), dict):
            return WebhookResult()  # other envelopes (app_rate_limited, ...): acknowledged, ignored
        msg = self.normalize(payload)
        return WebhookResult(messages=[msg] if msg else [])

    def normalize(self, payload: dict) -> NormalizedMessage | None:
        """The message in an ``event_callback``, or None when it is not one to answer."""
        event = payload["event"]
        event_type = event.get("type")  # a list or an object here is no event of ours (and unhashable)
        if not isinstance(event_type, str) or event_type not in MESSAGE_EVENTS or event.get("subtype") \
                or event.get("bot_id"):
            return None
        user, text, channel, ts = (event.get(k) for k in ("user", "text", "channel", "ts"))
        if not all(isinstance(v, str) and v for v in (user, text, channel, ts)):
            return None
        if (sent_at := parse_epoch(ts)) is None:
            raise BadRequest("event.ts: must be a Slack timestamp (epoch seconds).")
        if user == self.conf.bot_user_id:
            return None
        if self.conf.bot_user_id:
            text = re.sub(rf"<@{re.escape(self.conf.bot_user_id)}>\s*", "", text).strip() or text
        thread_ts = event.get("thread_ts")
        if thread_ts:
            thread_id, reply_thread = f"{channel}:{thread_ts}", thread_ts
        elif event.get("channel_type") == "im":
            thread_id, reply_thread = channel, None  # a DM is one conversation, answered in place
        else:
            thread_id, reply_thread = f"{channel}:{ts}", ts
        return NormalizedMessage(
            channel=self.kind,
            channel_id=self.channel.slug,
            user_id=user,
            message=text[: settings.GATEWAY_MAX_MESSAGE_CHARS],
            external_id=f"{channel}:{ts}",
            timestamp=sent_at,
            metadata={
                "thread_id": thread_id, "slack_channel": channel, "slack_thread_ts": reply_thread,
                "slack_event_id": payload.get("event_id"), "slack_team": payload.get("team_id"),
            },
            raw={k: v for k, v in payload.items() if k != "token"},  # the app's Verification Token: a secret
        )

    def client(self) -> WebClient:
        # retry_handlers=[]: retries happen once, in send_with_retries.
        return WebClient(token=self.conf.bot_token, base_url=settings.SLACK_API_BASE_URL.rstrip("/") + "/",
                         timeout=int(settings.CONNECTOR_HTTP_TIMEOUT_SECONDS), retry_handlers=[])

    def post(self, *, channel: str, text: str, thread_ts: str | None) -> None:
        try:
            self.client().chat_postMessage(channel=channel, text=text, thread_ts=thread_ts)
        except SlackApiError as exc:
            error = exc.response.get("error", "") if isinstance(exc.response.data, dict) else ""
            status = exc.response.status_code
            retry_after = exc.response.headers.get("Retry-After") or exc.response.headers.get("retry-after")
            transient = status == 429 or status >= 500 or error in TRANSIENT_ERRORS
            raise ConnectorError(
                f"chat.postMessage: HTTP {status} {error or 'error'}", permanent=not transient,
                retry_after=float(retry_after) if retry_after else None,
            ) from exc
        except (SlackRequestError, OSError) as exc:
            raise ConnectorError(f"chat.postMessage: {exc}") from exc

    def send(self, reply, *, inbound) -> None:
        self.post(channel=inbound.metadata["slack_channel"], text=reply.text,
                  thread_ts=inbound.metadata.get("slack_thread_ts"))

    def send_error(self, inbound, error) -> None:
        try:
            self.post(channel=inbound.metadata["slack_channel"], text=error.message,
                      thread_ts=inbound.metadata.get("slack_thread_ts"))
        except (ConnectorError, GatewayError) as exc:
            # The failure itself is already recorded on the message; telling the sender is best effort.
            logger.warning("could not tell the sender about the failure", extra={"error": str(exc)})
