"""A Redis command whose reply is lost: the connection drops after Redis ran it.

The gateway's Redis pools try a command once more on a fresh connection after a connection error
(gateway_project/redis_pool.py); when the error came after Redis ran the command (a connection
reset on its way back, a proxy or load balancer dropping it), the command runs twice. A budget's
reservation and settlement must not count twice for that: a reservation taken twice would hold
its amount for the rest of the period, a settlement booked twice would charge the call twice.

A private redis-server behind a relay that, once armed, swallows the reply to the next command
naming a given reservation id and closes that connection.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from devtools.stack import Stack, base_env

from .conftest import Relay

pytestmark = pytest.mark.services


class ReplyLosingRelay(Relay):
    """A relay to ``upstream_port``; ``lose_reply_to(token)``: the reply to the next command
    holding ``token`` is dropped and its connection closed (Redis has run the command)."""

    def __init__(self, upstream_port: int):
        self._token: bytes | None = None
        self._lock = threading.Lock()
        self.lost = 0
        super().__init__(upstream_port)

    def _state(self) -> dict:
        return {"lose": False}

    def lose_reply_to(self, token: bytes) -> None:
        with self._lock:
            self._token = token

    def _to_server(self, client, upstream, state) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._token is not None and self._token in data:
                        state["lose"], self._token = True, None
                upstream.sendall(data)
        except OSError:
            pass
        upstream.close()

    def _to_client(self, upstream, client, state) -> None:
        try:
            while data := upstream.recv(65536):
                if state["lose"]:  # Redis ran it; its reply goes nowhere, the connection is closed
                    self.lost += 1
                    client.shutdown(socket.SHUT_RDWR)  # closed under the client's feet (wakes _to_server)
                    client.close()
                    upstream.close()
                    return
                client.sendall(data)
        except OSError:
            pass
        client.close()


@pytest.fixture
def private_redis():
    stack = Stack(env=base_env())
    process = stack.redis()
    relay = ReplyLosingRelay(process.port)
    try:
        yield process, relay
    finally:
        relay.close()
        stack.stop()


@pytest.fixture
def ledger_via_relay(settings, private_redis):
    from apps.quotas import ledger as ledger_module

    process, relay = private_redis
    url = f"redis://127.0.0.1:{relay.port}/0"
    settings.GATEWAY_QUOTA_REDIS_URL = url
    direct = redis.Redis(port=process.port, socket_timeout=5)
    for script in (ledger_module.ADMIT_LUA, ledger_module.SETTLE_LUA, ledger_module.RATES_LUA):
        direct.script_load(script)  # no NOSCRIPT round trip in the way of the reply lost
    try:
        yield ledger_module.get_ledger(), relay, direct, process
    finally:
        ledger_module._ledgers.pop(url, None)


def _counter(key: str, amount: int = 100):
    from apps.quotas.ledger import CounterCall

    return CounterCall(key=key, limit=1000, amount=amount, expires_at=int(time.time()) + 3600, seed=0)


def test_a_reservation_whose_reply_was_lost_is_held_once(ledger_via_relay):
    """Must hold: ADMIT ran, its reply was lost and the pool ran it again on a fresh connection.
    The counter holds the call's reservation once, and once settled holds none: not one left
    behind for the rest of the period (the sender refused as if a call were still running)."""
    from apps.quotas.ledger import ADMITTED

    ledger, relay, _direct, _process = ledger_via_relay
    now = time.time()
    relay.lose_reply_to(b"rid-lost-admit")
    admission = ledger.admit([_counter("lost:admit")], reservation_id="rid-lost-admit", now=now,
                             reservation_expires_at=now + 600)
    assert relay.lost == 1
    assert admission.outcome == ADMITTED
    assert ledger.read(["lost:admit"], now=now) == [(0, 100)]
    ledger.settle(["lost:admit"], reservation_id="rid-lost-admit", amounts=[40])
    assert ledger.read(["lost:admit"], now=time.time()) == [(40, 0)]


def test_a_settlement_whose_reply_was_lost_is_booked_once(ledger_via_relay):
    """Must hold: SETTLE ran, its reply was lost and it ran again: the call's usage is booked once."""
    ledger, relay, _direct, _process = ledger_via_relay
    now = time.time()
    ledger.admit([_counter("lost:settle")], reservation_id="rid-lost-settle", now=now,
                 reservation_expires_at=now + 600)
    relay.lose_reply_to(b"rid-lost-settle")
    ledger.settle(["lost:settle"], reservation_id="rid-lost-settle", amounts=[40])
    assert relay.lost == 1
    assert ledger.read(["lost:settle"], now=time.time()) == [(40, 0)]


def test_a_redis_that_is_down_is_an_error_at_once(ledger_via_relay):
    """Must hold: Redis down (refusing connections): admit, settle and the rate count raise at once,
    the retry included (budgets then fail closed, rates open), with no stall."""
    from apps.quotas.ledger import RateCall

    ledger, _relay, _direct, process = ledger_via_relay
    now = time.time()
    ledger.admit([_counter("down:a")], reservation_id="rid-down", now=now, reservation_expires_at=now + 600)
    process.kill()
    for attempt in (
        lambda: ledger.admit([_counter("down:a")], reservation_id="rid-down-2", now=now,
                             reservation_expires_at=now + 600),
        lambda: ledger.settle(["down:a"], reservation_id="rid-down", amounts=[1]),
        lambda: ledger.count_rates([RateCall("down:rate", 10, int(now) + 60)], now=now),
    ):
        started = time.monotonic()
        with pytest.raises(redis.RedisError):
            attempt()
        assert time.monotonic() - started < 1.5
