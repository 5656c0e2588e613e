"""WeCom AI bot (企业微信智能机器人): encrypted JSON callbacks in, streamed replies out.

In: ``GET ?msg_signature&timestamp&nonce&echostr`` (URL verification: answer the decrypted
echostr) and ``POST {"encrypt": ...}`` verified and decrypted with today's WeCom scheme
(wecom_crypto) but an empty receive id, as WeCom documents for an internal AI bot. A ``text``
message (``msgid``, ``aibotid``, ``chatid``, ``chattype`` single/group, ``from.userid``,
``text.content``, ``response_url``) runs the agent, keyed by ``msgid``; so do ``voice`` (WeCom's
transcription) and ``mixed`` (its text items). Events and media are acknowledged.

Out, streamed: the callback is answered at once with an encrypted passive reply
``{"msgtype": "stream", "stream": {"id", "finish": false, "content": ""}}``. WeCom then calls back
``{"msgtype": "stream", "stream": {"id"}}`` to refresh it, and each refresh is answered with the
text generated so far, then ``finish: true`` with the whole answer. The text lives in the shared
cache (Redis with services), keyed by stream id: the worker writes the agent's deltas, any web
process answers the refresh. WeCom stops refreshing 6 minutes after the message: once
``stream_window_seconds`` have passed, a refresh closes the stream with what is there and the final
answer goes to the message's ``response_url`` (valid one hour, usable once, plain JSON), taken only
when it lies under WECOM_API_BASE_URL.

Who ends the stream is decided once, with an atomic ``cache.add`` on the stream's ``closed`` key:
the first answer (``reply:<id>``, an agent's or a person's) or failure (``error:<message id>``)
claims it and the next refresh shows it, or a refresh claims it when the window ran out. Any other
text for the message (a person's answer after the agent's failure, an answer after the window)
goes to its ``response_url``; a retry of the same delivery knows its own claim and posts nothing
twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse, JsonResponse

from apps.conversations.normalized import NormalizedMessage
from apps.conversations.pipeline import accept
from apps.core.errors import BadRequest, GatewayError, Unauthenticated
from apps.core.http import ConnectorError, request_json
from apps.quotas.notices import polite_text
from gateway_project.json_limits import loads_bounded

from .base import Connector, WebhookRequest, WebhookResult, check_timestamp
from .wecom_crypto import WeComCrypto, WeComCryptoError

logger = logging.getLogger(__name__)

RECEIVE_ID = ""  # "企业内部智能机器人场景中，ReceiveId为空字符串"
STATE_TTL_SECONDS = 3600  # as long as a response_url stays valid
TRANSIENT_ERRCODES = {-1, 45009}
LEADING_MENTION = re.compile(r"^\s*@\S+\s*")
# Callbacks that carry text: text.content, voice.content (WeCom's transcription), mixed's text items.
TEXT_MSGTYPES = ("text", "voice", "mixed")
CONTENT_MAX_BYTES = 20480  # stream.content and markdown.content: "最长不超过20480个字节"


@dataclass(frozen=True)
class WeComAiBotConfig:
    token: str
    encoding_aes_key: str
    bot_id: str = ""  # the bot's aibotid: callbacks for another bot are refused when set
    stream_window_seconds: float = 0.0  # 0: WECOM_AIBOT_STREAM_WINDOW_SECONDS

    def __post_init__(self):
        WeComCrypto(token=self.token, encoding_aes_key=self.encoding_aes_key, receive_id=RECEIVE_ID)
        if float(self.stream_window_seconds) < 0:
            raise ValueError("stream_window_seconds: not negative.")

    @property
    def window_seconds(self) -> float:
        return float(self.stream_window_seconds) or settings.WECOM_AIBOT_STREAM_WINDOW_SECONDS


def stream_id_for(slug: str, msgid: str) -> str:
    """The stream answering ``msgid`` (the same for a redelivered callback)."""
    return "gw" + hashlib.sha256(f"{slug}:{msgid}".encode()).hexdigest()[:30]


class StreamState:
    """One stream's text in the shared cache: ``opened`` (epoch), ``text`` so far, ``final``
    answer, and the ``closed`` claim (who ends the stream). Kept per channel: a refresh signed
    by another bot's channel finds nothing, whatever stream id it names."""

    def __init__(self, channel_id: int, stream_id: str):
        self.key = f"wecom_aibot:stream:{channel_id}:{stream_id}"

    def open(self) -> None:
        cache.add(f"{self.key}:opened", time.time(), timeout=STATE_TTL_SECONDS)  # a redelivery keeps it

    def opened(self) -> float | None:
        return cache.get(f"{self.key}:opened")

    def text(self) -> str:
        return cache.get(f"{self.key}:text") or ""

    def set_text(self, text: str) -> None:
        cache.set(f"{self.key}:text", text, timeout=STATE_TTL_SECONDS)

    def final(self) -> str | None:
        return cache.get(f"{self.key}:final")

    def set_final(self, text: str) -> None:
        cache.set(f"{self.key}:final", text, timeout=STATE_TTL_SECONDS)

    def claim(self, by: str) -> bool:
        """True for the one caller that closes the stream."""
        return cache.add(f"{self.key}:closed", by, timeout=STATE_TTL_SECONDS)

    def closed_by(self) -> str | None:
        return cache.get(f"{self.key}:closed")

    def mark_posted(self, by: str) -> None:
        cache.set(f"{self.key}:closed", f"posted:{by}", timeout=STATE_TTL_SECONDS)

    def keep_response_url(self, url: str) -> None:
        """The message's response_url: a credential for an hour, kept here, not stored with the
        message (as DingTalk's sessionWebhook). A redelivered callback keeps the first."""
        if url:
            cache.add(f"{self.key}:response_url", url, timeout=STATE_TTL_SECONDS)

    def response_url(self) -> str:
        return cache.get(f"{self.key}:response_url") or ""


class WeComAiBotConnector(Connector):
    kind = "wecom_aibot"
    Config = WeComAiBotConfig
    webhook = True
    content_types = ("application/json", "text/plain")

    def __init__(self, channel):
        super().__init__(channel)
        self._streamed: dict[str, str] = {}  # stream id → text sent so far by this agent run

    def stream(self, stream_id: str) -> StreamState:
        return StreamState(self.channel.pk, stream_id)  # kept per channel

    def handle_webhook(self, request: WebhookRequest) -> HttpResponse:
        """As the base does, except that a refused message is told so in its own stream at once
        (the first passive reply finishes with the reason) instead of by a notice sent later."""
        self.verify(request)
        result = self.parse(request)
        for msg in result.messages:
            try:
                accept(msg, channel=self.channel, client_ip=request.client_ip)
            except GatewayError as error:
                logger.warning("webhook message refused", extra={"code": error.code, "channel": self.channel.slug})
                stream_id, text = msg.metadata["aibot_stream_id"], polite_text(error)
                state = self.stream(stream_id)
                state.set_final(text)
                state.claim("refused")
                return self.passive_stream(stream_id, text, True, nonce=request.query.get("nonce", ""))
        return result.response or HttpResponse(status=200)

    @property
    def crypto(self) -> WeComCrypto:
        return WeComCrypto(token=self.conf.token, encoding_aes_key=self.conf.encoding_aes_key, receive_id=RECEIVE_ID)

    # --- inbound ------------------------------------------------------------------------
    def _encrypted_part(self, request: WebhookRequest) -> str:
        if request.method == "GET":
            return request.query.get("echostr", "")
        try:
            body = loads_bounded(request.body)
        except ValueError as exc:
            raise BadRequest("The body is not valid JSON.") from exc
        encrypt = body.get("encrypt") if isinstance(body, dict) else None
        if not isinstance(encrypt, str) or not encrypt:
            raise BadRequest('The callback has no "encrypt" field.')
        return encrypt

    def verify(self, request: WebhookRequest) -> None:
        q = request.query
        check_timestamp(q.get("timestamp", ""))
        try:
            self.crypto.verify(q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""),
                               self._encrypted_part(request))
        except WeComCryptoError as exc:
            raise Unauthenticated("The request signature does not match.", reason="signature_mismatch") from exc

    def _decrypt(self, encrypt: str) -> bytes:
        try:
            return self.crypto.decrypt(encrypt)
        except WeComCryptoError as exc:
            raise Unauthenticated(f"The message cannot be decrypted ({exc}).", reason="undecryptable") from exc

    def parse(self, request: WebhookRequest) -> WebhookResult:
        plain = self._decrypt(self._encrypted_part(request))
        if request.method == "GET":
            return WebhookResult(response=HttpResponse(plain, content_type="text/plain"))
        try:
            data = loads_bounded(plain)
        except ValueError as exc:
            raise BadRequest("The decrypted callback is not JSON.") from exc
        if not isinstance(data, dict):
            raise BadRequest("The decrypted callback must be a JSON object.")
        # Every callback names its bot. Bots may share a Token and EncodingAESKey, so a callback that
        # names none, or another than the channel's, is not taken as ours.
        bot_id = data.get("aibotid")
        if not isinstance(bot_id, str) or not bot_id or (self.conf.bot_id and bot_id != self.conf.bot_id):
            raise Unauthenticated("The callback is for another bot, or names none.", reason="wrong_bot")
        nonce = request.query.get("nonce", "")
        msgtype = data.get("msgtype")
        if msgtype == "stream":
            return WebhookResult(response=self.refresh(_stream_id(data), nonce=nonce))
        if msgtype not in TEXT_MSGTYPES:  # events, images, files, videos: acknowledged, not answered
            logger.info("wecom ai bot callback not answered", extra={"msgtype": msgtype})
            return WebhookResult(response=HttpResponse(""))
        msg = self.normalize(data)
        stream_id = msg.metadata["aibot_stream_id"]
        self.stream(stream_id).open()
        return WebhookResult(messages=[msg], response=self.passive_stream(stream_id, "", False, nonce=nonce))

    def normalize(self, data: dict) -> NormalizedMessage:
        sender = data.get("from") if isinstance(data.get("from"), dict) else {}
        user, msgid, text = sender.get("userid"), data.get("msgid"), message_text(data)
        chattype = data.get("chattype")
        if not all(isinstance(v, str) and v for v in (user, msgid, text)) or chattype not in ("single", "group"):
            raise BadRequest(f"A {data.get('msgtype')} callback needs msgid, chattype single|group, from.userid "
                             "and its text.")
        chatid = data.get("chatid") if isinstance(data.get("chatid"), str) else ""
        if chattype == "group":
            text = LEADING_MENTION.sub("", text, count=1) or text  # "@RobotA hello" → "hello"
        response_url = data.get("response_url") if isinstance(data.get("response_url"), str) else ""
        if response_url and not response_url.startswith(settings.WECOM_API_BASE_URL.rstrip("/") + "/"):
            # WeCom's own API host (…/cgi-bin/aibot/response): the answer never goes where a body says.
            logger.warning("wecom ai bot response_url outside WECOM_API_BASE_URL ignored")
            response_url = ""
        stream_id = stream_id_for(self.channel.slug, msgid)
        self.stream(stream_id).keep_response_url(response_url)
        return NormalizedMessage(
            channel=self.kind, channel_id=self.channel.slug, user_id=user,
            message=text.strip()[: settings.GATEWAY_MAX_MESSAGE_CHARS], external_id=msgid,
            metadata={
                "thread_id": f"group:{chatid}" if chattype == "group" and chatid else f"user:{user}",
                "aibot_stream_id": stream_id, "aibot_chattype": chattype, "aibot_chatid": chatid,
                "wecom_user": user,
            },
            raw={k: v for k, v in data.items() if k != "response_url"},  # a credential: not stored
        )

    def response_url_of(self, inbound) -> str:
        """Where an answer goes once the message's stream is closed (a message stored before it was
        kept in the stream's state carries it in its metadata)."""
        stream_id = inbound.metadata.get("aibot_stream_id")
        return (stream_id and self.stream(stream_id).response_url()) or inbound.metadata.get("aibot_response_url", "")

    def refresh(self, stream_id: str, *, nonce: str) -> HttpResponse:
        """The answer to a stream refresh: the text so far, or the whole answer with finish."""
        state = self.stream(stream_id)
        opened = state.opened()
        if opened is None:  # unknown or long gone: nothing more will come
            return self.passive_stream(stream_id, "", True, nonce=nonce)
        if (final := state.final()) is not None:
            return self.passive_stream(stream_id, final, True, nonce=nonce)
        if time.time() - opened < self.conf.window_seconds:
            return self.passive_stream(stream_id, state.text(), False, nonce=nonce)
        if state.claim("refresh"):
            logger.info("wecom ai bot stream window over; the answer will go to response_url")
            return self.passive_stream(stream_id, state.text(), True, nonce=nonce)
        final = state.final()
        if final is None and (state.closed_by() or "").startswith(("reply:", "error:")):
            # Claimed by an answer a moment ago, stored the next moment: the next refresh has it.
            return self.passive_stream(stream_id, state.text(), False, nonce=nonce)
        return self.passive_stream(stream_id, state.text() if final is None else final, True, nonce=nonce)

    def passive_stream(self, stream_id: str, content: str, finish: bool, *, nonce: str) -> JsonResponse:
        """An encrypted passive reply carrying a stream message (WeCom's JSON reply format)."""
        stream = {"id": stream_id, "finish": finish, "content": clip_utf8(content)}
        plain = json.dumps({"msgtype": "stream", "stream": stream}, ensure_ascii=False).encode()
        crypto, timestamp = self.crypto, str(int(time.time()))
        nonce = nonce or secrets.token_hex(8)
        encrypt = crypto.encrypt(plain)
        return JsonResponse({"encrypt": encrypt, "msgsignature": crypto.signature(timestamp, nonce, encrypt),
                             "timestamp": int(timestamp), "nonce": nonce})

    # --- outbound -----------------------------------------------------------------------
    def wants_stream(self, inbound) -> bool:
        return bool(inbound.metadata.get("aibot_stream_id"))

    def send_delta(self, inbound, piece: str) -> None:
        stream_id = inbound.metadata["aibot_stream_id"]
        self._streamed[stream_id] = self._streamed.get(stream_id, "") + piece
        self.stream(stream_id).set_text(self._streamed[stream_id])

    def send_reset(self, inbound, *, replaced: bool = False) -> None:
        stream_id = inbound.metadata["aibot_stream_id"]
        self._streamed[stream_id] = ""
        self.stream(stream_id).set_text("")

    def send(self, reply, *, inbound) -> None:
        if reply.follows_up:  # the message's stream has the agent's answer: this one goes after it
            self.post_response_url(self.response_url_of(inbound), reply.text)
            return
        self.finish(inbound, reply.text, by=f"reply:{reply.pk}")

    def tell_answered(self, inbound, reply) -> None:
        # The message's stream, if still open, ends with the answer rather than empty (its run,
        # if streaming, takes back what it streamed). A closed one is left: the answer went to
        # the later message, and posting it once per held message would repeat it in the chat.
        stream_id = inbound.metadata.get("aibot_stream_id")
        if stream_id:
            self._end_stream(self.stream(stream_id), reply.text, by=f"reply:{reply.pk}")

    def send_error(self, inbound, error) -> None:
        try:
            self.finish(inbound, error.message, by=f"error:{inbound.pk}")
        except (ConnectorError, GatewayError) as exc:
            # The failure itself is already recorded on the message; telling the sender is best effort.
            logger.warning("could not tell the sender about the failure", extra={"error": str(exc)})

    def finish(self, inbound, text: str, *, by: str) -> None:
        """End the message's stream with ``text`` (``by``: this answer or failure); when something
        else ended it (the window ran out, the agent's failure was shown), post ``text`` to the
        message's response_url instead."""
        stream_id = inbound.metadata.get("aibot_stream_id")
        state = self.stream(stream_id) if stream_id else None
        if state is not None:
            if self._end_stream(state, text, by=by) or state.closed_by() == f"posted:{by}":
                return  # the stream shows it, or an earlier attempt of this delivery posted it
        self.post_response_url(self.response_url_of(inbound), text)
        if state is not None:
            state.mark_posted(by)

    @staticmethod
    def _end_stream(state: StreamState, text: str, *, by: str) -> bool:
        """Claim the stream for ``text`` (or find it claimed by an earlier attempt of the same
        delivery) and store it for the next refresh; False when something else ended it."""
        if state.claim(by) or state.closed_by() == by:
            state.set_final(text)
            return True
        return False

    def post_response_url(self, url: str, text: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConnectorError("no response_url to answer on after the stream closed", permanent=True)
        payload = {"msgtype": "markdown", "markdown": {"content": clip_utf8(text)}}
        data = request_json("POST", url, payload=payload) or {}
        errcode = data.get("errcode", 0) if isinstance(data, dict) else 0
        if errcode:
            raise ConnectorError(f"response_url: errcode {errcode} {data.get('errmsg', '')}".strip(),
                                 permanent=errcode not in TRANSIENT_ERRCODES)


def message_text(data: dict) -> str | None:
    """The text a text, voice or mixed callback carries (None when it has none)."""
    msgtype = data.get("msgtype")
    body = data.get(msgtype) if isinstance(data.get(msgtype), dict) else {}
    if msgtype in ("text", "voice"):
        return body.get("content") if isinstance(body.get("content"), str) else None
    items = body.get("msg_item") if isinstance(body.get("msg_item"), list) else []
    texts = [item["text"]["content"] for item in items
             if isinstance(item, dict) and item.get("msgtype") == "text" and isinstance(item.get("text"), dict)
             and isinstance(item["text"].get("content"), str)]
    return "\n".join(texts) or None


def clip_utf8(text: str, limit: int = CONTENT_MAX_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def _stream_id(data: dict) -> str:
    stream = data.get("stream") if isinstance(data.get("stream"), dict) else {}
    stream_id = stream.get("id")
    if not isinstance(stream_id, str) or not stream_id:
        raise BadRequest("A stream refresh needs stream.id.")
    return stream_id
