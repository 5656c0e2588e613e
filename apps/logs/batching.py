"""Writes to Redis gathered in the process and sent in batches, off the request path.

So that a request or a model call records its metrics and its request-log row without a Redis
round trip of its own (why: docs/performance.md). A ``Batcher`` keeps what was added since its last write
and a daemon thread writes it every ``interval`` seconds (whoever reads the shared data first calls
``flush`` so its own process is included). A failed write is kept for the next one, ahead of what
came since. What a process holds when it is killed is lost: at most ``interval`` seconds of
metrics and request-log rows, never a message.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
P = TypeVar("P")


class Batcher(Generic[P]):
    """``add(item)`` folds an item into the pending batch; ``write(batch)`` sends one batch."""

    def __init__(self, name: str, *, empty: Callable[[], P], fold: Callable[[P, object], None],
                 merge: Callable[[P, P], P], write: Callable[[P], None], interval: Callable[[], float],
                 size: Callable[[P], int] = len, max_size: int | None = None):
        self.name = name
        self._empty, self._fold, self._merge, self._write = empty, fold, merge, write
        self._interval, self._size, self._max_size = interval, size, max_size
        self.pending: P = empty()
        self.lock = threading.Lock()  # the pending batch
        self.writing = threading.Lock()  # one write at a time, in order
        self._flusher_pid: int | None = None
        atexit.register(self.flush_quietly)

    def add(self, item) -> None:
        with self.lock:
            if self._max_size is not None and self._size(self.pending) >= self._max_size:
                logger.warning("batch full (Redis unreachable?); dropping an entry", extra={"batch": self.name})
                return
            self._fold(self.pending, item)
            if self._flusher_pid != os.getpid():  # none yet, or this is a forked child
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_forever, name=f"{self.name}-flush", daemon=True).start()

    def flush(self) -> None:
        """Write what is pending now: once this returns, everything added before the call is written
        (a write already under way in another thread is waited for). Raises if the write fails
        (the batch is kept)."""
        with self.writing:
            with self.lock:
                batch, self.pending = self.pending, self._empty()
            if not self._size(batch):
                return
            try:
                self._write(batch)
            except Exception:
                with self.lock:
                    self.pending = self._merge(batch, self.pending)
                raise

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.warning("batched write failed; kept for the next", extra={"batch": self.name}, exc_info=True)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self._interval())
            self.flush_quietly()
