"""WeCom group robot (群机器人) webhook: an outbound-only channel (notifications to a group chat).

Posts ``{"msgtype": "text"|"markdown", ...}`` to ``{WECOM_API_BASE_URL}/webhook/send?key=KEY``.
A robot may send 20 messages a minute: a shared counter in the cache keeps us under it, and a
send over the limit is a transient ConnectorError carrying the seconds until the next minute.
"""
from __future__ import annotations

import hashlib
import time
import urllib.parse
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from apps.core.http import ConnectorError, request_json

from .base import Connector

TRANSIENT_ERRCODES = {-1, 45009}


@dataclass(frozen=True)
class WeComRobotConfig:
    webhook_key: str
    msgtype: str = "text"

    def __post_init__(self):
        if self.msgtype not in ("text", "markdown"):
            raise ValueError("msgtype: text or markdown.")


class WeComRobotConnector(Connector):
    kind = "wecom_robot"
    Config = WeComRobotConfig
    webhook = False  # outbound only

    def reserve_slot(self) -> None:
        """Count this send against the robot's per-minute budget, or raise with the wait."""
        window = int(time.time() // 60)
        robot = hashlib.sha256(self.conf.webhook_key.encode()).hexdigest()[:16]  # the limit is per robot
        key = f"wecom_robot:{robot}:{window}"
        cache.add(key, 0, timeout=120)
        if cache.incr(key) > settings.WECOM_ROBOT_MESSAGES_PER_MINUTE:
            raise ConnectorError("group robot: 20 messages per minute reached",
                                 retry_after=60 - time.time() % 60)

    def post(self, text: str) -> None:
        self.reserve_slot()
        msgtype = self.conf.msgtype
        url = (f"{settings.WECOM_API_BASE_URL.rstrip('/')}/webhook/send?"
               f"{urllib.parse.urlencode({'key': self.conf.webhook_key})}")
        data = request_json("POST", url, payload={"msgtype": msgtype, msgtype: {"content": text}}) or {}
        errcode = data.get("errcode", 0)
        if errcode:
            raise ConnectorError(f"webhook/send: errcode {errcode} {data.get('errmsg', '')}".strip(),
                                 permanent=errcode not in TRANSIENT_ERRCODES,
                                 retry_after=60 - time.time() % 60 if errcode == 45009 else None)

    def send(self, reply, *, inbound) -> None:
        self.post(reply.text)

    def send_error(self, inbound, error) -> None:
        """Nobody to tell: a robot has no sender."""
