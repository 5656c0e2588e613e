"""Redis restarts (an upgrade, a failover) while the gateway is idle: once it is back, no request
is refused.

Every process keeps pooled connections to Redis (the cache, the budget and rate counters, the
reply bus, the broker); a restart leaves each of them dead. A request after Redis is back must be
served on a fresh connection, not refused (503) for one that died with the old server.

Two ways a restart reaches the gateway: ``direct``, Redis' own kernel closes every connection and
redis-py drops a closed one as it leaves its pool; ``relay``, Redis behind an address that outlives
it (a service or virtual IP, a failover), where a dead connection is found dead only when used.
"""
from __future__ import annotations

import pytest
import redis

from devtools.stack import http

from .conftest import BROKER, gateway_stack, key_with_a_daily_budget, post_message, wait_for_quiet_broker

pytestmark = [pytest.mark.services, pytest.mark.e2e]



@pytest.fixture(scope="module")
def gw_relay():
    """A stack of its own whose processes reach Redis through a ``FailoverRelay``."""
    yield from gateway_stack(BROKER, relay=True)


def restart_redis(gw) -> None:
    """Kill the stack's private Redis and start it again on the same port (empty: no persistence)."""
    port = gw.redis.port
    gw.redis.kill()
    gw.redis = gw.stack.redis(port=port)
    redis.Redis(port=port, socket_timeout=5).ping()


@pytest.mark.parametrize("path", ["direct", "relay"])
def test_no_request_is_refused_once_a_restarted_redis_is_back(request, ledger, path):
    """Must hold: Redis restarts while the gateway is idle, every process holding pooled
    connections to the old server. Once Redis is back, every request is answered (200), with and
    without a budget to check: none is refused (503 with Retry-After) for a dead pooled connection."""
    gw = request.getfixturevalue("gw" if path == "direct" else "gw_relay")
    # A budget the requests are far from: the entry check and the run's reservation go to Redis (a
    # budget fails closed: a dead connection there is a 503 at entry).
    budgeted = {"Authorization": f"Bearer {key_with_a_daily_budget(gw, 'redis-restart', tokens=100_000_000)}"}
    # Warm every pool: Daphne's cache, counters and inbox; the worker's counters, publisher, broker.
    for i, headers in enumerate([None, budgeted] * 2):
        status, body, _ = post_message(gw, {"message": f"before the restart {i}", "wait": 15}, headers=headers)
        ledger.sent += 1
        ledger.answered += status == 200
        assert status == 200, body
    wait_for_quiet_broker(gw)
    restart_redis(gw)
    ledger.faults += 1
    outcomes = []
    for i, headers in enumerate([budgeted, None] * 3):
        status, body, response_headers = post_message(gw, {"message": f"after the restart {i}", "wait": 15},
                                                      headers=headers)
        ledger.sent += 1
        ledger.answered += status == 200
        ledger.errors_500 += status >= 500 and status not in (503, 504)
        outcomes.append((status, body, response_headers.get("Retry-After")))
    assert [status for status, _b, _r in outcomes] == [200] * len(outcomes), outcomes
    ready_status, ready, _ = http("GET", f"{gw.url}/readyz")
    assert ready_status == 200, ready
