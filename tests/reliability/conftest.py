"""Reliability suite: the whole gateway on its own PostgreSQL and Redis, with faults injected.

The stack here owns a *private* PostgreSQL cluster and a *private* redis-server on free ports, so
tests may kill and restart them without touching the shared services other test runs use. Leases,
visibility timeouts and the requeue period are set short so recovery happens within seconds.
Each test records what it did in ``ledger``; the run ends with a summary table.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import psycopg
import pytest
import redis

from devtools.fake_platforms import FakePlatforms
from devtools.stack import PrivatePostgres, PrivateRabbitMQ, Stack, base_env, http
from tests.connectors.connector_helpers import crm_headers, wecom_crypto

SLACK_SECRET = "reliability-slack-signing-secret"
SLACK_BOT_USER = "U0RELBOT"
CREATE_SLACK_CHANNEL = f"""
from apps.agents.models import Agent
from apps.connectors.models import Channel
channel = Channel.objects.filter(slug="slack").first() or Channel(
    slug="slack", name="Slack", kind="slack", default_agent=Agent.objects.get(slug="assistant"),
    config={{"bot_user_id": "{SLACK_BOT_USER}"}})
channel.set_secrets(signing_secret="{SLACK_SECRET}", bot_token="xoxb-reliability")
channel.save()
"""
# seed_demo points the CRM channel's callbacks at fake_platforms' default port; ours is a free one.
POINT_CRM_CALLBACKS_AT = """
crm = Channel.objects.get(slug="crm")
crm.config = {{**crm.config, "callback_url": "{url}"}}
crm.save()
"""

FAST_RECOVERY_ENV = {
    "GATEWAY_AGENT_LEASE_SECONDS": "4",
    "CELERY_VISIBILITY_TIMEOUT_SECONDS": "6",
    "GATEWAY_REQUEUE_INTERVAL_SECONDS": "1",
    "GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS": "2",
    "GATEWAY_USER_RATE": "100000/m",
    "GATEWAY_AUTH_FAILURES_PER_IP": "15",
    "GATEWAY_AUTH_FAILURE_WINDOW_SECONDS": "300",
    "GATEWAY_OUTAGE_RETRY_AFTER_SECONDS": "2",
    "LLM_TIMEOUT_SECONDS": "20",
    "GATEWAY_QUOTA_RESERVATION_TTL_SECONDS": "15",
    "LOG_LEVEL": "WARNING",
}


@dataclass
class Row:
    faults: int = 0
    sent: int = 0
    answered: int = 0
    duplicates: int = 0
    errors_500: int = 0
    lost: int = 0  # accepted by the gateway and never answered
    notes: list[str] = field(default_factory=list)

    def record(self, counts: dict[str, int]) -> None:
        """Count accepted messages by their stored replies: answered, lost (none), duplicates."""
        self.answered += sum(1 for n in counts.values() if n)
        self.lost += sum(1 for n in counts.values() if not n)
        self.duplicates += sum(max(0, n - 1) for n in counts.values())


_LEDGER: dict[str, Row] = {}


@pytest.fixture
def ledger(request) -> Row:
    """This test's row in the summary table."""
    return _LEDGER.setdefault(request.node.name, Row())


def pytest_terminal_summary(terminalreporter):
    if not _LEDGER:
        return
    terminalreporter.section("reliability summary")
    header = f"{'test':<70} {'faults':>6} {'sent':>6} {'answered':>8} {'dupes':>6} {'500s':>5} {'lost':>5}"
    terminalreporter.write_line(header)
    totals = Row()
    for name, row in _LEDGER.items():
        terminalreporter.write_line(
            f"{name.removeprefix('test_')[:70]:<70} {row.faults:>6} {row.sent:>6} {row.answered:>8} "
            f"{row.duplicates:>6} {row.errors_500:>5} {row.lost:>5}"
        )
        for attr in ("faults", "sent", "answered", "duplicates", "errors_500", "lost"):
            setattr(totals, attr, getattr(totals, attr) + getattr(row, attr))
    terminalreporter.write_line(
        f"{'TOTAL':<70} {totals.faults:>6} {totals.sent:>6} {totals.answered:>8} {totals.duplicates:>6} "
        f"{totals.errors_500:>5} {totals.lost:>5}"
    )


# The Celery broker of the `gw` stack: "redis" (its private Redis) or "rabbitmq" (a private RabbitMQ
# node; Redis stays the channel layer and cache). .ci/run runs the suite once with each.
BROKER = os.environ.get("GATEWAY_RELIABILITY_BROKER", "redis")


@pytest.fixture(scope="session")
def gw():
    yield from gateway_stack(BROKER)


@pytest.fixture(scope="module")
def gw_rabbitmq(request):
    """A stack whose Celery broker is a private RabbitMQ node (``.rabbitmq``): `gw` itself when the
    suite runs on RabbitMQ, else a stack of its own for the module."""
    if BROKER == "rabbitmq":
        yield request.getfixturevalue("gw")
    else:
        yield from gateway_stack("rabbitmq")


def gateway_stack(broker: str = "redis", relay: bool = False):
    """fake_llm + private PostgreSQL + private Redis + Celery worker + beat + Daphne, seeded with the demo.

    ``broker="rabbitmq"`` adds a private RabbitMQ node as the Celery broker. ``relay``: the processes
    reach Redis through a ``FailoverRelay`` (``.relay``), the address a failover keeps."""
    if broker not in ("redis", "rabbitmq"):
        raise ValueError(f"unknown broker {broker!r} (GATEWAY_RELIABILITY_BROKER: redis or rabbitmq)")
    rabbitmq = PrivateRabbitMQ() if broker == "rabbitmq" else None
    pg = PrivatePostgres()
    stack = Stack(base_env(**FAST_RECOVERY_ENV))
    platforms = FakePlatforms()
    platforms.start_in_thread()
    try:
        pg.start()
        database = pg.create_database("gateway")
        redis_process = stack.redis()
        redis_relay = FailoverRelay(redis_process.port) if relay else None
        llm_url = stack.fake_llm()
        redis_port = redis_relay.port if relay else redis_process.port
        stack.env.update(DATABASE_URL=database, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                         OPENAI_BASE_URL=llm_url, SLACK_API_BASE_URL=platforms.slack_base_url,
                         WECOM_API_BASE_URL=platforms.wecom_base_url)
        if rabbitmq is not None:
            rabbitmq.start()
            stack.env["CELERY_BROKER_URL"] = rabbitmq.url()
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        channels = CREATE_SLACK_CHANNEL + POINT_CRM_CALLBACKS_AT.format(url=platforms.crm_callback_url)
        stack.manage("shell", "-c", channels)
        gateway = SimpleNamespace(stack=stack, pg=pg, database=database, redis=redis_process, llm_url=llm_url,
                                  demo=demo, workers=[stack.worker()], beat=stack.beat(), platforms=platforms,
                                  rabbitmq=rabbitmq, relay=redis_relay)
        gateway.url = stack.daphne()
        gateway.auth = {"Authorization": f"Bearer {demo['api_keys']['customer']}"}
        yield gateway
    except Exception:
        print(stack.logs())
        raise
    finally:
        for process in stack.processes:  # throwaway stack: no graceful shutdown to wait for
            process.kill()
        pg.destroy()
        if rabbitmq is not None:
            rabbitmq.destroy()
        if redis_relay is not None:
            redis_relay.close()
        platforms.stop()


KEY_WITH_A_DAILY_BUDGET = """
from django.contrib.auth import get_user_model
from apps.identities.roles import Role, ensure_role_groups
from apps.identities.services import api_key_create
from apps.quotas.models import QuotaPolicy
user, _ = get_user_model().objects.get_or_create(username=%(username)r)
user.groups.add(ensure_role_groups()[Role.CUSTOMER])
key, raw = api_key_create(user=user, actor=None, name=%(username)r)
QuotaPolicy.objects.create(scope="api_key", api_key=key, tokens_per_day=%(tokens)d)
print(raw)
"""


def key_with_a_daily_budget(gw, username: str, tokens: int) -> str:
    """A new API key of a customer ``username``, with a budget of ``tokens`` a day of its own."""
    script = KEY_WITH_A_DAILY_BUDGET % {"username": username, "tokens": tokens}
    return gw.stack.manage("shell", "-c", script).strip().splitlines()[-1]


class Relay:
    """A TCP relay to the server on ``upstream_port``; a subclass pipes each connection's two
    directions (``_to_client``, ``_to_server``), sharing ``_state()``'s value between them."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="redis-relay", daemon=True).start()

    def _state(self):
        raise NotImplementedError

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()  # the server is down: refused, as the server itself would
                continue
            upstream.settimeout(None)
            state = self._state()
            threading.Thread(target=self._to_client, args=(upstream, client, state), daemon=True).start()
            threading.Thread(target=self._to_server, args=(client, upstream, state), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


class FailoverRelay(Relay):
    """A relay in front of the private Redis: the one address clients know Redis by (a service
    or virtual IP) across a restart or failover behind it.

    A connection whose server went away is not closed towards its client: the client learns of it
    only when it next sends on it, and is then reset, as by a new host at that address that never
    knew the connection. (Without the relay, the dead server's own kernel closes each connection and
    redis-py drops it as it leaves the pool.) New connections go to the server on ``upstream_port``.
    """

    def _state(self) -> threading.Event:
        return threading.Event()  # the server side of this connection ended

    @staticmethod
    def _to_client(upstream: socket.socket, client: socket.socket, gone: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        gone.set()  # the client is not told
        upstream.close()

    @staticmethod
    def _to_server(client: socket.socket, upstream: socket.socket, gone: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if gone.is_set():
                    break
                upstream.sendall(data)
            else:
                client.close()  # the client hung up
                upstream.close()
                return
        except OSError:
            pass
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset


def sql(gw, query: str, *params):
    """Rows of one query on the stack's database (a fresh connection: it may have restarted)."""
    with psycopg.connect(gw.database, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def replies_per_message(gw, message_ids) -> dict[str, int]:
    """Agent replies stored per inbound message id (0 for an unanswered one)."""
    ids = [str(i) for i in message_ids]
    rows = sql(gw, "SELECT reply_to_id::text, count(*) FROM conversations_message "
                   "WHERE direction = 'out' AND reply_to_id::text = ANY(%s) GROUP BY 1", ids)
    counts = dict(rows)
    return {i: counts.get(i, 0) for i in ids}


def wait_until_answered(gw, message_ids, timeout: float = 60) -> dict[str, int]:
    """Poll the database until every message has a reply (or failed); returns replies_per_message."""
    deadline = time.monotonic() + timeout
    ids = [str(i) for i in message_ids]
    while True:
        rows = sql(gw, "SELECT id::text, status FROM conversations_message WHERE id::text = ANY(%s)", ids)
        if all(status in ("answered", "failed") for _id, status in rows) and len(rows) == len(ids):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return replies_per_message(gw, ids)


def broker_idle(gw, queue: str = "gateway") -> bool:
    """No agent or delivery task is queued or running on the stack's broker: the queue is empty and
    nothing received is unacknowledged (tasks are acknowledged late, once done)."""
    if gw.rabbitmq is not None:
        listed = gw.rabbitmq.ctl("list_queues", "name", "messages")  # messages: ready + unacknowledged
        counts = dict(line.split() for line in listed.splitlines() if len(line.split()) == 2)
        return counts.get(queue, "0") == "0"
    client = redis.Redis(port=gw.redis.port, socket_timeout=5)
    return client.llen(queue) == 0 and client.hlen("unacked") == 0


def wait_for_quiet_broker(gw, timeout: float = 30) -> None:
    """Wait until ``broker_idle``: afterwards no run is left that could still post a reply."""
    deadline = time.monotonic() + timeout
    while not broker_idle(gw):
        assert time.monotonic() < deadline, "the broker never went quiet: tasks still queued or running"
        time.sleep(0.1)


def post_message(gw, body, headers=None, timeout: float = 60):
    return http("POST", f"{gw.url}/api/v1/messages", body, {**gw.auth, **(headers or {})}, timeout=timeout)


def accept_all(gw, ledger, texts) -> list[str]:
    """Send each text without waiting; every one must be accepted (202). Their message ids."""
    accepted = []
    for text in texts:
        status, body, _ = post_message(gw, {"message": text})
        ledger.sent += 1
        assert status == 202, body
        accepted.append(body["message_id"])
    return accepted


def webhook_deliver(gw, slug: str, body: bytes | str, headers: dict, query: str = ""):
    """POST raw bytes to a channel's webhook as the platform would; (status, body bytes)."""
    import urllib.error
    import urllib.request

    data = body.encode() if isinstance(body, str) else body
    url = f"{gw.url}/api/v1/channels/{slug}/webhook" + (f"?{query}" if query else "")
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def slack_deliver(gw, payload: dict, *, retry_num: int | None = None, secret: str = SLACK_SECRET,
                  timestamp: int | None = None, signature: str | None = None, headers: dict | None = None):
    """POST a Slack Events API payload, signed as Slack signs it (v0 HMAC-SHA256)."""
    import hashlib
    import hmac

    body = json.dumps(payload).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    if signature is None:
        digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
        signature = f"v0={digest}"
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature,
               **(headers or {})}
    if retry_num is not None:
        headers.update({"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"})
    return webhook_deliver(gw, "slack", body, headers)


def wecom_deliver(gw, callback: tuple[str, str], headers: dict | None = None):
    """POST a WeCom callback ((query, body) from ``wecom_callback``) to the demo WeCom channel."""
    query, body = callback
    return webhook_deliver(gw, gw.demo["channels"]["wecom"]["slug"], body,
                           {"Content-Type": "text/xml", **(headers or {})}, query)


def wecom_demo_crypto(gw):
    """The demo WeCom channel's callback crypto (its Token, EncodingAESKey and CorpID)."""
    return wecom_crypto(**gw.demo["channels"]["wecom"])


def crm_deliver(gw, payload: dict, **signing):
    """POST a CRM event to the demo CRM channel, signed with its shared secret."""
    crm = gw.demo["channels"]["crm"]
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **crm_headers(body, secret=crm["secret"], **signing)}
    return webhook_deliver(gw, crm["slug"], body, headers)


def slack_message_event(text: str, *, channel: str = "C0REL", user: str = "U0ALICE", ts: str | None = None) -> dict:
    """An Events API ``message`` event as Slack sends it (recorded shape, fresh ids)."""
    import uuid

    ts = ts or f"{time.time():.6f}"
    return {
        "token": "unused-verification-token", "team_id": "T0REL", "api_app_id": "A0REL", "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}", "event_time": int(time.time()),
        "event": {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
                  "event_ts": ts, "channel_type": "channel"},
    }
