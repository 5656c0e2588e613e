"""One Redis connection pool per server per process, for Django's cache.

Django makes a cache object per thread and per async context, and each RedisCache object makes its
own connection pool: under Daphne every request (and every websocket's helper thread) opened a new
TCP connection to Redis for its first rate-limit check. ``CACHES["default"]["OPTIONS"]["pool_class"]``
points here so all of them share one pool (redis-py's pools are thread-safe and reset after fork).
"""
from __future__ import annotations

import threading

import redis


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
                    pool = cls._shared[key] = redis.ConnectionPool.from_url(url, **kwargs)
        return pool
