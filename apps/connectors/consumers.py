"""The web chat websocket: ``/ws/chat/<slug>/`` (frames in docs/channels/webchat.md)."""
from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs, urlparse

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from apps.conversations.normalized import NormalizedMessage, storable_text
from apps.conversations.pipeline import accept
from apps.conversations.realtime import conversation_group
from apps.conversations.selectors import conversation_history
from apps.conversations.services import conversation_open
from apps.core.client_ip import client_ip_for_scope
from apps.core.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    InternalError,
    NotFound,
    PayloadTooLarge,
    outage_error,
)
from apps.logs.middleware import new_request_id
from apps.logs.request_log import request_log_record
from apps.logs.structured import request_id_var
from apps.quotas.iprules import check_ip_rules
from apps.quotas.limits import check_address_rate
from gateway_project.db import database_sync_to_async
from gateway_project.json_limits import TooDeep, loads_bounded

from .models import Channel, channel_by_slug
from .visitors import resolve_chat_user, sender_now, visitor_user

logger = logging.getLogger(__name__)

CLIENT_ID_MAX_CHARS = 100


CLOSE_POLICY_VIOLATION = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_RATE_LIMITED = 4429


def admit_connection(client_ip: str | None, channel: Channel) -> None:
    """IP rules, then the per-address connection rate; raises GatewayError."""
    check_ip_rules(client_ip, channel=channel)
    check_address_rate("webchat_connect", client_ip, settings.WEBCHAT_CONNECTS_PER_IP_RATE, channel=channel)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab in one web chat conversation.

    Who: a logged-in session is that user; otherwise the ``visitor`` query parameter carries a
    signed visitor token (issued by the chat page) and makes a customer, if the channel allows
    visitors; a new visitor's user is made with its first message. The conversation is the
    ``conversation`` query parameter (the sender's own), or a new one made with the first message.

    Each client address may open WEBCHAT_CONNECTS_PER_IP_RATE sockets; a frame longer than
    WEBCHAT_MAX_FRAME_CHARS, or nesting deeper than GATEWAY_JSON_MAX_DEPTH, is answered with an
    error frame before it is parsed, and the socket stays open.
    """

    channel_row: Channel
    client_ip: str | None = None
    user = None
    visitor_id: str | None = None
    session_key: str | None = None  # the session a signed-in user's socket speaks for
    group: str | None = None
    conversation_id: str | None = None
    ANSWERED_KEPT = 256  # messages this socket saw answered, newest last (their streams are over)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answered: dict[str, None] = {}

    async def connect(self):
        # The address IP rules, limits, the audit and the request log all use (behind a trusted
        # proxy, the client it names), refusals included.
        self.client_ip = client_ip_for_scope(self.scope)
        slug = self.scope["url_route"]["kwargs"]["slug"]
        self.channel_row = await database_sync_to_async(channel_by_slug)(slug, kind="webchat")
        if self.channel_row is None or not self.channel_row.enabled:
            await self._refuse(NotFound("No such chat."), CLOSE_NOT_FOUND)
            return
        page = page_origin(self.scope, self.channel_row)
        if page is None:
            await self._refuse(Forbidden("This page may not open this chat."), CLOSE_POLICY_VIOLATION)
            return
        try:
            await database_sync_to_async(admit_connection)(self.client_ip, self.channel_row)
        except GatewayError as error:
            await self._refuse(error, CLOSE_RATE_LIMITED if error.status == 429 else CLOSE_POLICY_VIOLATION)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            sender = await database_sync_to_async(resolve_chat_user)(
                channel=self.channel_row,
                # A gateway session speaks only from the gateway's own pages: a site embedding the
                # widget may be same-site with the gateway, and its scripts must not speak as the
                # staff member or customer signed in there.
                session_user=self.scope.get("user") if page == "own" else None,
                visitor_token=(query.get("visitor") or [""])[0],
                conversation_id=(query.get("conversation") or [""])[0],
                client_ip=self.client_ip,
            )
        except GatewayError as error:
            await self._refuse(error, CLOSE_POLICY_VIOLATION)
            return
        self.user, self.visitor_id, self.conversation_id = sender.user, sender.visitor_id, sender.conversation_id
        if sender.user is not None and sender.visitor_id is None:  # the session's user: it must stay signed in
            self.session_key = getattr(self.scope.get("session"), "session_key", None)
        await self.accept()
        if self.conversation_id:
            await self._join(self.conversation_id)
            # A returning tab sees what was said, including replies that landed while it was away.
            history = await database_sync_to_async(conversation_history)(self.conversation_id)
            await self.send_json({"type": "history", "conversation_id": self.conversation_id, "messages": history})

    async def _refuse(self, error: GatewayError, close_code: int) -> None:
        request_log_record(  # no I/O: batched to Redis by a thread
            status_code=error.status, rejection=error.code, channel=getattr(self, "channel_row", None),
            channel_kind="webchat", client_ip=self.client_ip,
            request_id=new_request_id(),
        )
        # Accept first so the browser receives the reason, then close.
        await self.accept()
        await self.send_json(error.error_frame())
        await self.close(code=close_code)

    async def _join(self, conversation_id: str) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        self.conversation_id = conversation_id
        self.group = conversation_group(conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        # Bad JSON is the client's mistake: answer with an error frame, keep the socket.
        if text_data is None:
            await self.send_json(BadRequest("Send JSON text frames.").error_frame())
            return
        if len(text_data) > settings.WEBCHAT_MAX_FRAME_CHARS:  # judged by size alone, never parsed
            await self.send_json(PayloadTooLarge(
                f"A frame is limited to {settings.WEBCHAT_MAX_FRAME_CHARS} characters.").error_frame())
            return
        try:
            content = loads_bounded(text_data)
        except TooDeep as exc:
            await self.send_json(BadRequest(str(exc)).error_frame())
            return
        except ValueError:
            await self.send_json(BadRequest("The frame is not valid JSON.").error_frame())
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        started = time.monotonic()
        token = request_id_var.set(new_request_id())
        try:
            status_code, rejection, message_id = await self._receive_message(content)
            request_log_record(  # no I/O: batched to Redis by a thread
                status_code=status_code, rejection=rejection, channel=self.channel_row, user=self.user,
                message=message_id, client_ip=self.client_ip,
                latency_ms=int((time.monotonic() - started) * 1000), request_id=request_id_var.get(),
            )
        finally:
            request_id_var.reset(token)

    async def _receive_message(self, content) -> tuple[int, str, str | None]:
        """Handle one message frame; returns (status code, rejection code, message id) for the log."""
        client_id = content.get("client_id") if isinstance(content, dict) else None
        try:
            return await self._accept_message(content, client_id)
        except Exception as exc:
            # PostgreSQL or Redis away: a retryable error frame. Anything else is a bug: logged with
            # its traceback, the client told ``internal_error``. Either way the socket stays open.
            if (error := outage_error(exc)) is None:
                logger.exception("web chat frame failed", extra={"channel": self.channel_row.slug})
                error = InternalError()
            await self.send_json({**error.error_frame(), "client_id": client_id})
            return error.status, error.code, None

    async def _accept_message(self, content, client_id) -> tuple[int, str, str | None]:
        try:
            text, client_id = parse_message_frame(content)
            if self.user is None:
                # A visitor's first message: now it becomes a customer user.
                self.user = await database_sync_to_async(visitor_user)(
                    channel=self.channel_row, visitor_id=self.visitor_id)
            else:  # read again: the one checked when the socket opened may be blocked since
                self.user = await database_sync_to_async(sender_now)(self.user, session_key=self.session_key)
            if self.conversation_id is None:
                # Open the conversation and listen to it before the agent can answer.
                conversation = await database_sync_to_async(conversation_open)(
                    channel=self.channel_row, user=self.user
                )
                await self._join(str(conversation.id))
            msg = NormalizedMessage(
                channel="webchat",
                channel_id=self.channel_row.slug,
                user_id=str(self.user.pk),
                principal_id=str(self.user.pk),
                message=text,
                conversation_id=self.conversation_id,
                external_id=f"{self.user.pk}:{client_id}" if client_id else None,
            )
            accepted = await database_sync_to_async(accept)(
                msg, channel=self.channel_row, principal=self.user, client_ip=self.client_ip
            )
        except GatewayError as error:
            frame = error.error_frame()
            if isinstance(client_id, str):
                frame["client_id"] = client_id
            await self.send_json(frame)
            return error.status, error.code, None
        await self.send_json({
            "type": "ack",
            "message_id": str(accepted.message.id),
            "conversation_id": str(accepted.conversation.id),
            "client_id": client_id,
            "duplicate": accepted.duplicate,
        })
        return 202, "", str(accepted.message.id)

    # Channel-layer events from the agent run (see WebchatConnector). A message has one answer:
    # once its reply is told, a run still streaming for it (a person answered meanwhile, and the
    # run will drop its own) is not shown beside it.
    async def chat_delta(self, event):
        if event["reply_to"] not in self.answered:
            await self.send_json({"type": "delta", "reply_to": event["reply_to"], "delta": event["delta"]})

    async def chat_reset(self, event):
        # The streamed attempt failed: the client drops the deltas it shows for this reply_to.
        if event["reply_to"] not in self.answered:
            await self.send_json({"type": "reset", "reply_to": event["reply_to"]})

    async def chat_reply(self, event):
        self.answered[event["reply_to"]] = None
        if len(self.answered) > self.ANSWERED_KEPT:
            del self.answered[next(iter(self.answered))]
        await self.send_json({
            "type": "reply", "message_id": event["message_id"], "reply_to": event["reply_to"],
            "message": event["message"], "model": event.get("model", ""),
        })

    async def chat_error(self, event):
        frame = {"type": "error", "code": event["code"], "message": event["message"], "reply_to": event.get("reply_to")}
        if event.get("retry_after") is not None:
            frame["retry_after"] = event["retry_after"]
        await self.send_json(frame)


def parse_message_frame(content) -> tuple[str, str | None]:
    """Validate a client frame; returns (text, client_id) or raises BadRequest."""
    if not isinstance(content, dict):
        raise BadRequest("A frame must be a JSON object.")
    if content.get("type") != "message":
        raise BadRequest("Unknown frame type; send {\"type\": \"message\", \"message\": \"...\"}.")
    text = content.get("message")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("message: must be a non-empty string.")
    if len(text) > settings.GATEWAY_MAX_MESSAGE_CHARS:
        raise BadRequest(f"message: at most {settings.GATEWAY_MAX_MESSAGE_CHARS} characters.")
    client_id = content.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= CLIENT_ID_MAX_CHARS):
        raise BadRequest(f"client_id: must be a string of 1 to {CLIENT_ID_MAX_CHARS} characters.")
    # The pipeline refuses these too; here they are refused before a visitor's user or a
    # conversation is made for a message that cannot be stored.
    if not storable_text(text) or (client_id is not None and not storable_text(client_id)):
        raise BadRequest("Text with NUL characters or unpaired surrogates cannot be stored.")
    return text, client_id


def page_origin(scope, channel: Channel) -> str | None:
    """Where the socket was opened from: ``"own"`` (the gateway's own host), ``"embed"`` (an
    Origin listed on the channel), or None (any other page: refused)."""
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:
        # Browsers always send Origin on websockets; non-browser clients are not cross-site.
        return "own"
    if urlparse(origin).netloc == headers.get(b"host", b"").decode("latin-1"):
        return "own"
    return "embed" if channel.embeddable_from(origin) else None


class NoSuchSocket(AsyncJsonWebsocketConsumer):
    """Any other websocket path: refused at the handshake (the server answers 403), where Channels'
    router would raise ValueError and the server log a traceback and answer 500."""

    async def connect(self):
        await self.close()
