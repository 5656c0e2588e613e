"""WeCom (企业微信) self-built app: encrypted callbacks in, ``message/send`` out.

In: ``GET ?msg_signature&timestamp&nonce&echostr`` (URL verification: answer the decrypted
echostr) and ``POST`` XML whose ``Encrypt`` is verified, decrypted (wecom_crypto) and parsed with
defusedxml (no DTDs, no entities). ``MsgType=text`` becomes a message keyed by ``MsgId``; events
(``enter_agent``, ``subscribe``, ...) are acknowledged and ignored on purpose. The callback is
answered at once with an empty 200; the reply goes out through the API.
Out: ``message/send`` with an ``access_token`` from ``gettoken``, cached in the Django cache and
refreshed on expiry or on errcode 40014 / 42001.
"""
from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse

from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import BadRequest, Forbidden, GatewayError, Unauthenticated
from apps.core.http import ConnectorError, request_json

from .base import Connector, WebhookRequest, WebhookResult, check_timestamp, parse_epoch
from .wecom_crypto import WeComCrypto, WeComCryptoError

logger = logging.getLogger(__name__)

TOKEN_INVALID_ERRCODES = {40014, 42001}  # invalid / expired access_token
TRANSIENT_ERRCODES = {-1, 45009, 45033}  # system busy, API frequency limits
TOKEN_EARLY_REFRESH_SECONDS = 300


@dataclass(frozen=True)
class WeComConfig:
    corp_id: str
    agent_id: str
    token: str
    encoding_aes_key: str
    secret: str

    def __post_init__(self):
        WeComCrypto(token=self.token, encoding_aes_key=self.encoding_aes_key, receive_id=self.corp_id)
        if not str(self.agent_id).isdigit():
            raise ValueError("agent_id: the app's numeric AgentId.")


def parse_xml(data: bytes | str) -> Element:
    """Parse untrusted XML: DTDs, entities and external references are refused (400)."""
    try:
        return fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise BadRequest("XML with DTDs or entities is not accepted.") from exc
    except ParseError as exc:
        raise BadRequest("The body is not well-formed XML.") from exc
    except (ValueError, LookupError) as exc:  # expat refuses an encoding it cannot read (gbk, utf-32, a made-up one)
        raise BadRequest("The XML declares an encoding that is not accepted; send UTF-8.") from exc


def _epoch(value: str | None) -> float:
    if not value:
        return time.time()
    if (stamp := parse_epoch(value.strip())) is None:
        raise BadRequest("CreateTime: must be epoch seconds.")
    return stamp


class WeComConnector(Connector):
    kind = "wecom"
    Config = WeComConfig
    webhook = True
    content_types = ("text/xml", "application/xml")

    @property
    def crypto(self) -> WeComCrypto:
        conf = self.conf
        return WeComCrypto(token=conf.token, encoding_aes_key=conf.encoding_aes_key, receive_id=conf.corp_id)

    def _encrypted_part(self, request: WebhookRequest) -> str:
        if request.method == "GET":
            return request.query.get("echostr", "")
        encrypt = parse_xml(request.body).findtext("Encrypt")
        if not encrypt:
            raise BadRequest("The callback has no Encrypt element.")
        return encrypt

    def verify(self, request: WebhookRequest) -> None:
        check_timestamp(request.query.get("timestamp", ""))
        q = request.query
        try:
            self.crypto.verify(q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""),
                               self._encrypted_part(request))
        except WeComCryptoError as exc:
            raise Unauthenticated("The request signature does not match.", reason="signature_mismatch") from exc

    def _decrypt(self, encrypt: str) -> bytes:
        try:
            return self.crypto.decrypt(encrypt)
        except WeComCryptoError as exc:
            # Signed but undecryptable (tampered ciphertext, wrong CorpID): not from our app.
            raise Unauthenticated(f"The message cannot be decrypted ({exc}).", reason="undecryptable") from exc

    def _check_addressee(self, xml: Element, *, required: bool) -> None:
        """The decrypted message is for this channel's corp (ToUserName) and app (AgentID).

        Apps of one corp may share a Token and EncodingAESKey, so a valid envelope alone does not
        say which app a message was sent to; a message for another app is refused (403, audited as
        ``request.refused`` with reason ``wrong_recipient``). Messages must name both; events are
        checked on what they carry (some, like contact changes, carry no AgentID).
        """
        to_user, agent_id = (xml.findtext("ToUserName") or "").strip(), (xml.findtext("AgentID") or "").strip()
        if ((to_user or required) and to_user != self.conf.corp_id) or \
                ((agent_id or required) and agent_id != str(self.conf.agent_id)):
            raise Forbidden("This callback is addressed to another WeCom corp or app.", reason="wrong_recipient")

    def parse(self, request: WebhookRequest) -> WebhookResult:
        plain = self._decrypt(self._encrypted_part(request))
        if request.method == "GET":
            return WebhookResult(response=HttpResponse(plain, content_type="text/plain"))
        xml = parse_xml(plain)
        msg_type = xml.findtext("MsgType", "")
        self._check_addressee(xml, required=msg_type != "event")
        if msg_type == "event":
            # enter_agent, subscribe, location...: nothing to answer, but not an error either.
            logger.info("wecom event ignored", extra={"event": xml.findtext("Event", "")})
            return WebhookResult(response=HttpResponse(""))
        if msg_type != "text":
            logger.info("wecom message type not handled", extra={"msg_type": msg_type})
            return WebhookResult(response=HttpResponse(""))
        user, text, msg_id = xml.findtext("FromUserName", ""), xml.findtext("Content", ""), xml.findtext("MsgId", "")
        if not (user and text.strip() and msg_id):
            raise BadRequest("A text message needs FromUserName, Content and MsgId.")
        msg = NormalizedMessage(
            channel=self.kind, channel_id=self.channel.slug, user_id=user,
            message=text[: settings.GATEWAY_MAX_MESSAGE_CHARS], external_id=msg_id,
            timestamp=_epoch(xml.findtext("CreateTime")),
            metadata={"thread_id": f"user:{user}", "wecom_user": user},
            raw={"xml": plain.decode("utf-8", "replace")},
        )
        return WebhookResult(messages=[msg], response=HttpResponse(""))

    # --- outbound -----------------------------------------------------------------------
    def _token_cache_key(self) -> str:
        return f"wecom:access_token:{self.conf.corp_id}:{self.conf.agent_id}"

    def access_token(self, *, refresh: bool = False) -> str:
        key = self._token_cache_key()
        if not refresh and (token := cache.get(key)):
            return token
        query = urllib.parse.urlencode({"corpid": self.conf.corp_id, "corpsecret": self.conf.secret})
        data = request_json("GET", f"{settings.WECOM_API_BASE_URL.rstrip('/')}/gettoken?{query}")
        if not isinstance(data, dict) or data.get("errcode", 0) != 0 or not data.get("access_token"):
            errcode = data.get("errcode") if isinstance(data, dict) else None
            raise ConnectorError(f"gettoken: errcode {errcode}", permanent=errcode not in TRANSIENT_ERRCODES)
        lifetime = int(data.get("expires_in") or 7200)
        cache.set(key, data["access_token"], timeout=max(lifetime - TOKEN_EARLY_REFRESH_SECONDS, 60))
        return data["access_token"]

    def post_text(self, *, user: str, text: str) -> None:
        payload = {"touser": user, "msgtype": "text", "agentid": int(self.conf.agent_id), "text": {"content": text}}
        for refresh in (False, True):
            token = self.access_token(refresh=refresh)
            url = f"{settings.WECOM_API_BASE_URL.rstrip('/')}/message/send?access_token={urllib.parse.quote(token)}"
            data = request_json("POST", url, payload=payload) or {}
            errcode = data.get("errcode", 0)
            if errcode == 0:
                return
            if errcode in TOKEN_INVALID_ERRCODES and not refresh:
                cache.delete(self._token_cache_key())
                continue
            raise ConnectorError(f"message/send: errcode {errcode} {data.get('errmsg', '')}".strip(),
                                 permanent=errcode not in TRANSIENT_ERRCODES)

    def send(self, reply, *, inbound) -> None:
        self.post_text(user=inbound.metadata["wecom_user"], text=reply.text)

    def send_error(self, inbound, error) -> None:
        try:
            self.post_text(user=inbound.metadata["wecom_user"], text=error.message)
        except (ConnectorError, GatewayError) as exc:
            # The failure itself is already recorded on the message; telling the sender is best effort.
            logger.warning("could not tell the sender about the failure", extra={"error": str(exc)})
