"""A write buffer for high-volume log rows, so the request path never waits on an INSERT.

Entry points push one small JSON row; a beat task (or, on the embedded default, a background
thread) drains the buffer in batches with one bulk INSERT each. Services mode keeps the buffer in a
Redis list (shared by every process, survives a process restart; each process appends its rows a
few times a second); the embedded default keeps it in this process's memory.
"""
from __future__ import annotations

import json
import threading
from collections import deque

from django.conf import settings

from .batching import Batcher


class LogBuffer:
    """A FIFO of JSON-able dicts. ``push`` is cheap; ``take``/``commit`` drain in order."""

    def push(self, row: dict) -> None:
        raise NotImplementedError

    def peek(self, count: int) -> list[dict]:
        """The oldest ``count`` rows, left in place until ``discard(len(rows))``."""
        raise NotImplementedError

    def discard(self, count: int) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class MemoryBuffer(LogBuffer):
    def __init__(self):
        self._rows: deque[dict] = deque()
        self._lock = threading.Lock()

    def push(self, row: dict) -> None:
        self._rows.append(row)

    def peek(self, count: int) -> list[dict]:
        with self._lock:
            return [self._rows[i] for i in range(min(count, len(self._rows)))]

    def discard(self, count: int) -> None:
        with self._lock:
            for _ in range(min(count, len(self._rows))):
                self._rows.popleft()

    def __len__(self) -> int:
        return len(self._rows)


class RedisBuffer(LogBuffer):
    """The Redis list, filled in batches: ``push`` keeps the row in the process and a daemon thread
    appends what gathered every GATEWAY_LOG_PUSH_SECONDS in one RPUSH (apps/logs/batching.py), so a
    request does not wait on Redis to be logged. Reading the list sends this process's rows first."""

    def __init__(self, key: str):
        self.key = key
        self.batch = Batcher(f"logbuffer-{key}", write=self._write, interval=lambda: settings.GATEWAY_LOG_PUSH_SECONDS,
                             max_size=settings.GATEWAY_LOG_PUSH_MAX_ROWS)

    def push(self, row: dict) -> None:
        self.batch.add(json.dumps(row, default=str))

    def _write(self, rows: list[str]) -> None:
        redis_client().rpush(self.key, *rows)

    def peek(self, count: int) -> list[dict]:
        self.batch.flush_quietly()
        return [json.loads(item) for item in redis_client().lrange(self.key, 0, count - 1)]

    def discard(self, count: int) -> None:
        redis_client().ltrim(self.key, count, -1)

    def __len__(self) -> int:
        self.batch.flush_quietly()
        return int(redis_client().llen(self.key))


_redis = None
_redis_lock = threading.Lock()


def redis_client():
    """One Redis client (and connection pool) per process, with short timeouts: logging must
    never hold a request up for long."""
    global _redis
    if _redis is None:
        import redis

        with _redis_lock:
            if _redis is None:
                _redis = redis.Redis.from_url(
                    settings.REDIS_URL,
                    socket_timeout=settings.GATEWAY_LOG_REDIS_TIMEOUT_SECONDS,
                    socket_connect_timeout=settings.GATEWAY_LOG_REDIS_TIMEOUT_SECONDS,
                )
    return _redis


def make_buffer(name: str) -> LogBuffer:
    if settings.REDIS_URL:
        return RedisBuffer(f"gateway:logbuffer:{name}")
    return MemoryBuffer()
