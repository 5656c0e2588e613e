"""DingTalk (钉钉) enterprise robot: HTTP callback in, sessionWebhook or robot send API out.

In (open.dingtalk.com "机器人接收消息" / robot receive message, HTTP mode): headers ``timestamp``
(epoch milliseconds) and ``sign`` = Base64 of HMAC-SHA256, keyed with the app secret, over
``timestamp + "\\n" + app secret``; a timestamp more than an hour away from now is refused, as
DingTalk documents (the signature covers the timestamp only, not the body: see
docs/decisions/dingtalk-callback-signature.md). ``msgtype: text`` messages in one-to-one
(``conversationType`` "1") and group ("2", delivered only when the robot is mentioned, the mention
already removed by DingTalk) conversations become messages keyed by ``msgId``; the sender is
``senderStaffId`` (an employee of the organisation), else ``senderId``; the thread is the
conversation.
Out: while the message's ``sessionWebhook`` is valid (``sessionWebhookExpiredTime``), the reply is
posted there; the URL is a short-lived credential, so it is kept in the cache until it expires
(never in the database) and only when it lies under DINGTALK_SESSION_WEBHOOK_BASE_URL. Otherwise the
robot send API (``/v1.0/robot/oToMessages/batchSend`` to the staff id, ``/v1.0/robot/groupMessages/send``
to the group) with an access token from ``/v1.0/oauth2/accessToken``, cached until shortly before it
expires and fetched again on a 401.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import JsonResponse

from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import BadRequest, GatewayError, Unauthenticated
from apps.core.http import ConnectorError
from gateway_project.json_limits import loads_bounded

from .base import (
    Connector,
    WebhookRequest,
    WebhookResult,
    check_timestamp,
    constant_time_equals,
    parse_epoch,
)
from .open_api import call_json, retry_after

logger = logging.getLogger(__name__)

# DingTalk: "timestamp 与系统当前时间戳如果相差1小时以上，则认为是非法的请求" (the platform's rule, not ours).
CALLBACK_MAX_AGE_SECONDS = 3600
ONE_TO_ONE, GROUP = "1", "2"
TOKEN_EARLY_REFRESH_SECONDS = 300
SESSION_WEBHOOK_MARGIN_SECONDS = 60  # stop using a session webhook this long before it expires
TEXT_MSG_KEY = "sampleText"


def sign(timestamp: str, app_secret: str) -> str:
    """The ``sign`` header: Base64(HMAC-SHA256(app secret, timestamp + "\\n" + app secret))."""
    digest = hmac.new(app_secret.encode(), f"{timestamp}\n{app_secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class DingTalkConfig:
    app_key: str
    app_secret: str
    robot_code: str = ""  # the robot's code; an enterprise app's robot code is usually its AppKey

    @property
    def robot(self) -> str:
        return self.robot_code or self.app_key


class DingTalkConnector(Connector):
    kind = "dingtalk"
    Config = DingTalkConfig
    webhook = True
    content_types = ("application/json",)

    # --- inbound --------------------------------------------------------------------------
    def verify(self, request: WebhookRequest) -> None:
        if request.method != "POST":
            raise BadRequest("DingTalk posts its messages; nothing to answer to a GET.")
        timestamp = request.header("timestamp")
        check_timestamp(timestamp, unit=1000, max_age_seconds=CALLBACK_MAX_AGE_SECONDS)
        given = request.header("sign")
        if not given or not constant_time_equals(sign(timestamp, self.conf.app_secret), given):
            raise Unauthenticated("The request signature does not match.", reason="signature_mismatch")

    def parse(self, request: WebhookRequest) -> WebhookResult:
        try:
            payload = loads_bounded(request.body)
        except ValueError as exc:
            raise BadRequest("The body is not valid JSON.") from exc
        if not isinstance(payload, dict):
            raise BadRequest("The body must be a JSON object.")
        if payload.get("msgtype") != "text":
            logger.info("dingtalk message type not handled", extra={"msgtype": str(payload.get("msgtype"))[:32]})
            return WebhookResult(response=JsonResponse({}))
        msg = self.normalize(payload)
        return WebhookResult(messages=[msg] if msg else [], response=JsonResponse({}))

    def normalize(self, payload: dict) -> NormalizedMessage | None:
        msg_id, conversation_id = payload.get("msgId"), payload.get("conversationId")
        conversation_type = str(payload.get("conversationType", ""))
        staff_id = payload.get("senderStaffId") if isinstance(payload.get("senderStaffId"), str) else ""
        sender = staff_id or payload.get("senderId")
        text = payload.get("text", {}).get("content") if isinstance(payload.get("text"), dict) else None
        if not all(isinstance(v, str) and v for v in (msg_id, conversation_id, sender)) or not isinstance(text, str):
            raise BadRequest("A text message needs msgId, conversationId, senderStaffId or senderId and text.content.")
        if conversation_type not in (ONE_TO_ONE, GROUP):
            raise BadRequest('conversationType: "1" (one-to-one) or "2" (group).')
        text = text.strip()
        if not text:
            return None
        self._keep_session_webhook(msg_id, payload.get("sessionWebhook"), payload.get("sessionWebhookExpiredTime"))
        raw = {k: v for k, v in payload.items() if k != "sessionWebhook"}  # a credential: not stored
        return NormalizedMessage(
            channel=self.kind, channel_id=self.channel.slug, user_id=sender,
            message=text[: settings.GATEWAY_MAX_MESSAGE_CHARS], external_id=msg_id,
            timestamp=_epoch_ms(payload.get("createAt")),
            metadata={
                "thread_id": conversation_id, "dingtalk_msg_id": msg_id,
                "dingtalk_conversation_id": conversation_id, "dingtalk_conversation_type": conversation_type,
                "dingtalk_staff_id": staff_id,
                "dingtalk_robot_code": str(payload.get("robotCode") or self.conf.robot),
            },
            raw=raw,
        )

    def _session_key(self, msg_id: str) -> str:
        return f"dingtalk:session_webhook:{self.channel.pk}:{hashlib.sha256(msg_id.encode()).hexdigest()[:32]}"

    def _keep_session_webhook(self, msg_id: str, url, expires_ms) -> None:
        if not isinstance(url, str) or not url:
            return
        base = settings.DINGTALK_SESSION_WEBHOOK_BASE_URL.rstrip("/") + "/"
        if not url.startswith(base):
            logger.warning("dingtalk sessionWebhook outside DINGTALK_SESSION_WEBHOOK_BASE_URL ignored")
            return
        if (expires := parse_epoch(expires_ms, unit=1000)) is None:
            return  # not a time (a huge number or inf overflowed int() here): the reply goes by the API
        lifetime = expires - time.time() - SESSION_WEBHOOK_MARGIN_SECONDS
        if lifetime > 1:
            # The first delivery's: a redelivery of the msgId (whose signature covers only its
            # timestamp, so its body may be anyone's) cannot send the answer somewhere else.
            cache.add(self._session_key(msg_id), url, timeout=int(lifetime))

    # --- outbound -------------------------------------------------------------------------
    def _api(self, path: str) -> str:
        return f"{settings.DINGTALK_API_BASE_URL.rstrip('/')}/v1.0/{path}"

    def _token_cache_key(self) -> str:
        return f"dingtalk:access_token:{self.conf.app_key}"

    def access_token(self, *, refresh: bool = False) -> str:
        """The app's access token, from the cache unless ``refresh``; raises ConnectorError."""
        key = self._token_cache_key()
        if not refresh and (token := cache.get(key)):
            return token
        status, data, headers = call_json("POST", self._api("oauth2/accessToken"),
                                          payload={"appKey": self.conf.app_key, "appSecret": self.conf.app_secret})
        data = data if isinstance(data, dict) else {}
        if status != 200 or not data.get("accessToken"):
            raise ConnectorError(f"oauth2/accessToken: HTTP {status} {str(data.get('code', ''))[:64]}",
                                 permanent=not (status == 429 or status >= 500), retry_after=retry_after(headers))
        lifetime = int(data.get("expireIn") or 7200)
        cache.set(key, data["accessToken"], timeout=max(lifetime - TOKEN_EARLY_REFRESH_SECONDS, 60))
        return data["accessToken"]

    def deliver(self, inbound, text: str) -> None:
        """Through the message's session webhook while valid, else through the robot send API."""
        key = self._session_key(inbound.metadata["dingtalk_msg_id"])
        if url := cache.get(key):
            status, data, headers = call_json("POST", url, payload={"msgtype": "text", "text": {"content": text}})
            errcode = data.get("errcode", 0) if isinstance(data, dict) else None
            if status == 200 and errcode == 0:
                return
            if status == 429 or status >= 500:
                raise ConnectorError(f"sessionWebhook: HTTP {status}", retry_after=retry_after(headers))
            logger.info("dingtalk session webhook refused, using the send API", extra={"errcode": errcode})
            cache.delete(key)
        self.send_via_api(inbound.metadata, text)

    def send_via_api(self, metadata: dict, text: str) -> None:
        payload = {"robotCode": metadata.get("dingtalk_robot_code") or self.conf.robot, "msgKey": TEXT_MSG_KEY,
                   "msgParam": json.dumps({"content": text}, ensure_ascii=False)}
        if metadata["dingtalk_conversation_type"] == GROUP:
            path, payload["openConversationId"] = "robot/groupMessages/send", metadata["dingtalk_conversation_id"]
        elif metadata.get("dingtalk_staff_id"):
            path, payload["userIds"] = "robot/oToMessages/batchSend", [metadata["dingtalk_staff_id"]]
        else:
            raise ConnectorError("The session webhook expired and the sender has no staff id to send to.",
                                 permanent=True)
        for refresh in (False, True):
            token = self.access_token(refresh=refresh)
            status, data, headers = call_json("POST", self._api(path), payload=payload,
                                              headers={"x-acs-dingtalk-access-token": token})
            data = data if isinstance(data, dict) else {}
            if status == 401 and not refresh:
                cache.delete(self._token_cache_key())
                continue
            if status == 200:
                if metadata.get("dingtalk_staff_id") in (data.get("flowControlledStaffIdList") or []):
                    raise ConnectorError(f"{path}: flow controlled", retry_after=retry_after(headers))
                if metadata.get("dingtalk_staff_id") in (data.get("invalidStaffIdList") or []):
                    raise ConnectorError(f"{path}: invalid staff id", permanent=True)
                return
            raise ConnectorError(f"{path}: HTTP {status} {str(data.get('code', ''))[:64]}",
                                 permanent=not (status == 429 or status >= 500), retry_after=retry_after(headers))

    def send(self, reply, *, inbound) -> None:
        self.deliver(inbound, reply.text)

    def send_error(self, inbound, error) -> None:
        try:
            self.deliver(inbound, error.message)
        except (ConnectorError, GatewayError) as exc:
            # The failure itself is already recorded on the message; telling the sender is best effort.
            logger.warning("could not tell the sender about the failure", extra={"error": str(exc)})


def _epoch_ms(value) -> float:
    if value in (None, ""):
        return time.time()
    if (stamp := parse_epoch(value, unit=1000)) is None:
        raise BadRequest("createAt: must be epoch milliseconds.")
    return stamp
