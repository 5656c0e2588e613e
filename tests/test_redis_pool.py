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
