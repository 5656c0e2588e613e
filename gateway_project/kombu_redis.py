"""Celery's Redis transport, building its synchronous Redis client once per channel.

kombu's Redis channel builds a new ``redis.Redis`` for every publish and every message a worker
receives and acknowledges (``conn_or_acquire``), over the same connection pool, and building one
costs more CPU than the command it sends (measured: docs/performance.md). A client over a pool is
thread-safe (each command borrows a connection), so one per channel and pool is enough; a new pool
(after a reconnect) gets a new client. ``CELERY_BROKER_TRANSPORT`` names this for redis:// brokers.
"""
from __future__ import annotations

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
