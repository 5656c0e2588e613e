"""One Redis connection pool per server per process, for Django's cache.

Django makes a cache object per thread and per async context, and each RedisCache object makes its
own connection pool, so under Daphne a request (or a websocket's helper thread) would open a new
TCP connection to Redis for its first rate-limit check. ``CACHES["default"]["OPTIONS"]["pool_class"]``
points here so all of them share one pool (redis-py's pools are thread-safe and reset after fork),
and the ``SharedRedisCache`` backend shares one client object per pool as well. Every pool of the
gateway's own Redis clients is a ``waiting_pool``.

Each of these pools, and the channel layer's (settings ``CHANNEL_LAYERS``), tries a command once
more on a fresh connection when its connection fails (``STALE_CONNECTION_RETRY``, ``_ASYNC``): a connection to
a Redis that restarted or failed over is found dead only when used, and must not fail a request.
"""
from __future__ import annotations

import threading

import redis
from django.conf import settings
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

# One more try, at once, on a new connection, after a connection error only: a pooled connection
# that died with the server it was opened to. A timeout is not tried again (the command may have
# run: a reservation or a count would be taken twice, and a stalled Redis would be waited on
# twice); a Redis that is down refuses the second try too, so an outage is still an error at once.
# A connection error can also come after Redis ran the command (the reply lost): the budget ledger's
# reservations and settlements are idempotent for that (apps/quotas/ledger.py).
STALE_CONNECTION_RETRY = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
STALE_CONNECTION_RETRY_ASYNC = AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))  # the layer's


def waiting_pool(url: str, **kwargs) -> redis.BlockingConnectionPool:
    """A pool that waits up to ``GATEWAY_REDIS_POOL_TIMEOUT_SECONDS`` for one of
    ``GATEWAY_REDIS_POOL_MAX_CONNECTIONS`` connections instead of refusing with MaxConnectionsError:
    the gateway's Redis clients (cache, budget counters, publishing) are used from as many threads
    or greenlets as a process holds requests or runs. A command whose connection fails is tried
    once more on a fresh one (``STALE_CONNECTION_RETRY``)."""
    return redis.BlockingConnectionPool.from_url(url, **{
        "max_connections": settings.GATEWAY_REDIS_POOL_MAX_CONNECTIONS,
        "timeout": settings.GATEWAY_REDIS_POOL_TIMEOUT_SECONDS, "retry": STALE_CONNECTION_RETRY, **kwargs})


class SharedConnectionPool(redis.ConnectionPool):
    _shared: dict[tuple, redis.ConnectionPool] = {}
    _lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs) -> redis.ConnectionPool:
        key = (url, tuple(sorted((name, repr(value)) for name, value in kwargs.items())))
        pool = cls._shared.get(key)
        if pool is None:
            with cls._lock:
                pool = cls._shared.get(key)
                if pool is None:
                    pool = cls._shared[key] = waiting_pool(url, **kwargs)
        return pool


class SharedClientRedisCacheClient(RedisCacheClient):
    """Django's Redis cache client, handing out one ``redis.Redis`` per pool instead of a new one
    per cache call (building a client costs more CPU than the GET it sends; a client over a pool
    is thread-safe)."""

    _clients: dict[redis.ConnectionPool, redis.Redis] = {}

    def get_client(self, key=None, *, write=False) -> redis.Redis:
        pool = self._get_connection_pool(write)
        client = self._clients.get(pool)
        if client is None:
            client = self._clients.setdefault(pool, self._client(connection_pool=pool))
        return client


class SharedRedisCache(RedisCache):
    """``CACHES[...]["BACKEND"]``: Django's RedisCache with SharedClientRedisCacheClient."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = SharedClientRedisCacheClient
