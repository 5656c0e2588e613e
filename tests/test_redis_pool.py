"""Django's Redis cache shares one connection pool and one client per process (redis_pool.py)."""
import threading

import pytest
from django.core.cache import caches

pytestmark = pytest.mark.services


def test_caches_of_other_threads_share_one_client_and_still_work():
    clients = []

    def in_a_thread():
        cache = caches["default"]
        cache.set("redis-pool-test", "from a thread", 30)
        clients.append(cache._cache.get_client(write=True))

    threads = [threading.Thread(target=in_a_thread) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    here = caches["default"]
    assert here.get("redis-pool-test") == "from a thread"
    assert len({id(client) for client in clients + [here._cache.get_client(write=True)]}) == 1
    here.set("redis-pool-counter", 1, 30)
    assert here.incr("redis-pool-counter") == 2


def hold_connections_at_once(client, threads: int = 120, seconds: float = 0.2) -> list:
    """``threads`` threads each hold a connection of ``client``'s pool for ``seconds`` (a BLPOP
    on a key nobody pushes); what each got back, or the exception it raised."""
    outcomes = []

    def hold():
        try:
            outcomes.append(client.blpop("redis-pool-test-nothing", timeout=seconds))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever a thread met
            outcomes.append(exc)

    workers = [threading.Thread(target=hold) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


def test_the_cache_pool_waits_for_a_connection_instead_of_refusing(settings):
    """More callers than the pool has connections (a gevent worker's greenlets) wait their turn.
    (redis-py's own pool refuses past its 100 connections: MaxConnectionsError.)"""
    import redis

    from gateway_project.redis_pool import SharedConnectionPool

    settings.GATEWAY_REDIS_POOL_MAX_CONNECTIONS = 40
    pool = SharedConnectionPool.from_url(settings.REDIS_URL, client_name="redis-pool-test")
    assert hold_connections_at_once(redis.Redis(connection_pool=pool)) == [None] * 120


def test_the_budget_ledger_waits_for_a_connection_instead_of_refusing(settings):
    from apps.quotas import ledger

    settings.GATEWAY_REDIS_POOL_MAX_CONNECTIONS = 40
    settings.GATEWAY_QUOTA_REDIS_URL = f"{settings.REDIS_URL}?client_name=ledger-pool-test"
    try:
        assert hold_connections_at_once(ledger.get_ledger().client) == [None] * 120
    finally:
        ledger._ledgers.pop(settings.GATEWAY_QUOTA_REDIS_URL, None)
