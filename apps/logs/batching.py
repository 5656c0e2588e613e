"""Writes to Redis gathered in the process and sent in batches, off the request path.

So that a request records its request-log row without a Redis round trip of its own (why:
docs/performance.md). A ``Batcher`` keeps what was added since its last write and a daemon thread
writes it every ``interval`` seconds (whoever reads the shared data first calls ``flush`` so its
own process is included). A failed write is kept for the next one, ahead of what came since. What
a process holds when it is killed is lost: at most ``interval`` seconds of request-log rows, never
a message.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Batcher:
    """``add(item)`` appends an item to the pending batch; ``write(items)`` sends one batch."""

    def __init__(self, name: str, *, write: Callable[[list], None], interval: Callable[[], float],
                 max_size: int | None = None):
        self.name = name
        self._write, self._interval, self._max_size = write, interval, max_size
        self.pending: list = []
        self.lock = threading.Lock()  # the pending batch
        self.writing = threading.Lock()  # one write at a time, in order
        self._flusher_pid: int | None = None
        atexit.register(self.flush_quietly)

    def add(self, item) -> None:
        with self.lock:
            if self._max_size is not None and len(self.pending) >= self._max_size:
                logger.warning("batch full (Redis unreachable?); dropping an entry", extra={"batch": self.name})
                return
            self.pending.append(item)
            if self._flusher_pid != os.getpid():  # none yet, or this is a forked child
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_forever, name=f"{self.name}-flush", daemon=True).start()

    def flush(self) -> None:
        """Write what is pending now: once this returns, everything added before the call is written
        (a write already under way in another thread is waited for). Raises if the write fails
        (the batch is kept)."""
        with self.writing:
            with self.lock:
                batch, self.pending = self.pending, []
            if not batch:
                return
            try:
                self._write(batch)
            except Exception:
                with self.lock:
                    self.pending = batch + self.pending
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
