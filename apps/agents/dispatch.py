"""Hand an accepted message to an agent run: a Celery task, or in-process in the embedded default.

Tasks are found by name, not imported: an agent run queues the conversation's next message, so this
module sits below the runtime and the tasks that use it. ``apps.agents.tasks`` defines the Celery
tasks and registers their in-process twins with ``runs_in_process``; the app's ``ready()`` imports it.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator

import redis
from django.conf import settings
from kombu.exceptions import OperationalError as BrokerOperationalError
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway_project.celery import app, publish_declare

logger = logging.getLogger(__name__)

RUN_AGENT = "agents.run_agent"
DELIVER_REPLY = "agents.deliver_reply"
BROKER_ERRORS = (BrokerOperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)

_in_process: dict[str, Callable[..., None]] = {}
_embedded_pool: _Pool | None = None

# How urgent a run is on the embedded pool: runs that can make progress (new messages,
# hand-overs, deliveries) before re-checks of messages that were waiting their turn (``_Pool``).
NOW, RE_CHECK = 0, 1


def runs_in_process(task_name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register what the embedded default runs on its thread pool in place of the task ``task_name``."""
    def register(function: Callable[..., None]) -> Callable[..., None]:
        _in_process[task_name] = function
        return function
    return register


def enqueue_agent_run(message_id) -> None:
    """Queue ``run_agent(message_id)``. Call after the message is committed (on_commit)."""
    if settings.GATEWAY_AGENT_DISPATCH == "celery":
        try:
            # The message goes straight to the queue (the default exchange). On Redis nothing is
            # declared (the worker declares the queue; a list needs no declaring); on RabbitMQ the
            # queue is declared once per connection, or the first runs would be dropped.
            app.tasks[RUN_AGENT].apply_async((str(message_id),), declare=publish_declare())
        except BROKER_ERRORS:
            # The message is committed: the periodic requeue task (apps.agents.recovery) queues it
            # once the broker is back, so the sender's "accepted" still means "will be answered".
            logger.warning("broker unavailable; message left for requeue", extra={"message_id": str(message_id)})
        return
    # Embedded default: no broker. Run on a thread pool so the caller (often the event loop's
    # helper thread) returns at once, as it would with a real queue.
    _embedded().submit(NOW, _in_process[RUN_AGENT], str(message_id))


def enqueue_delivery(reply_id) -> None:
    """Queue ``deliver_reply(reply_id)`` (recovery of a reply stored and not delivered)."""
    if settings.GATEWAY_AGENT_DISPATCH == "celery":
        try:
            app.tasks[DELIVER_REPLY].apply_async((str(reply_id),), declare=[])
        except BROKER_ERRORS:
            logger.warning("broker unavailable; reply left for recovery", extra={"reply_id": str(reply_id)})
        return
    _embedded().submit(NOW, _in_process[DELIVER_REPLY], str(reply_id))


def run_later(delay: float, task_name: str, *args) -> None:
    """The embedded default's ``retry(countdown=delay)``: run the in-process twin of ``task_name``
    on the pool after ``delay`` seconds, behind the runs queued to go now. The wait holds a timer
    entry, not a pool thread: a burst of messages waiting their turn in one conversation kept every
    thread asleep, and the run that would have let them through queued behind them."""
    global _timer
    with _timer_lock:
        if _timer is None or not _timer.thread.is_alive():
            _timer = _Timer()
    _timer.add(delay, lambda: _embedded().submit(RE_CHECK, _in_process[task_name], *args))


class _Timer:
    """One thread that calls each function added when its time comes."""

    def __init__(self):
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._changed = threading.Condition()
        self._order = itertools.count()
        self.thread = threading.Thread(target=self._run, name="agent-timer", daemon=True)
        self.thread.start()

    def add(self, delay: float, function: Callable[[], object]) -> None:
        with self._changed:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), function))
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, function = heapq.heappop(self._due)
            try:
                function()
            except Exception:  # the pool was shut down (pool.shutdown(); at exit it queues instead)
                logger.warning("a delayed agent run could not be started", exc_info=True)


_timer: _Timer | None = None
_timer_lock = threading.Lock()


def delayed_runs() -> int:
    """Runs the embedded default has waiting on its timer (``run_later``)."""
    return len(_timer._due) if _timer is not None else 0


class _Pool:
    """The embedded default's thread pool: its own threads, taking queued runs by urgency.

    Urgency: a ``ThreadPoolExecutor`` runs in the order submitted, and a burst into one
    conversation filled its queue with re-checks; another conversation's new message, or the
    hand-over that lets the burst through, waited behind all of them (14 s behind 938 re-checks in
    a review). Here a run that can go now is keyed by when it came; a due re-check by when it came
    plus the longest pause between re-checks: it gives way to what came up to that long after it,
    then takes its turn, so sustained overload cannot hold it back for good.

    Exit: an executor's threads run everything still queued while the interpreter exits, where a
    run can no longer publish (asgiref refuses new futures) and, under ``make run``, the model may
    be gone: a Ctrl-C mid-burst failed over a hundred accepted messages. These threads are not
    daemons: once the main thread has ended (``process_stopping``), each finishes the run it
    holds and takes no other. What was queued stays ``accepted`` for the next start's recovery.
    """

    # How often an idle thread looks whether the process is stopping (nothing wakes it then).
    IDLE_CHECK_SECONDS = 0.5

    def __init__(self, workers: int):
        self._workers = max(1, workers)
        self._queued: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._changed = threading.Condition()
        self._order = itertools.count()
        self._names = itertools.count()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._closed = False

    def submit(self, priority: int, function: Callable[..., None], *args) -> None:
        """Queue ``function(*args)``. Raises RuntimeError once ``shutdown`` was called. While the
        process stops, the run is left queued: its message is still ``accepted`` in the database."""
        give_way = settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS if priority == RE_CHECK else 0.0
        with self._changed:
            if self._closed:
                raise RuntimeError("the embedded agent pool is shut down")
            heapq.heappush(self._queued, (time.monotonic() + give_way, next(self._order), function, args))
            if self._idle:
                self._changed.notify()
            # More queued than threads waiting (some may be woken already): one more thread.
            if len(self._queued) > self._idle and len(self._threads) < self._workers and not process_stopping():
                self._start_thread()

    def _start_thread(self) -> None:  # under self._changed
        # Not a daemon, whoever submits (the recovery and timer threads are daemons): a daemon
        # would be cut off at exit in the middle of its run.
        thread = threading.Thread(target=self._work, name=f"agent_{next(self._names)}", daemon=False)
        self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the others take the run, or recovery does
            self._threads.discard(thread)
            logger.warning("embedded agent pool: could not start a thread",
                           extra={"threads": len(self._threads)}, exc_info=True)

    def _work(self) -> None:
        try:
            while (entry := self._next()) is not None:
                _, _, function, args = entry
                try:
                    function(*args)
                except Exception:  # the in-process twins log their own; the thread goes on
                    logger.exception("embedded agent pool: a run raised")
        finally:
            with self._changed:
                self._threads.discard(threading.current_thread())
                if self._queued and not process_stopping():  # ended by a BaseException: replace it
                    self._start_thread()
                self._changed.notify_all()

    def _next(self):
        """The most urgent queued run, waiting for one; None when this thread should end."""
        with self._changed:
            while True:
                if process_stopping():
                    return None
                if self._queued:
                    return heapq.heappop(self._queued)
                if self._closed:
                    return None
                self._idle += 1
                try:
                    self._changed.wait(self.IDLE_CHECK_SECONDS)
                finally:
                    self._idle -= 1

    def queued(self) -> int:
        return len(self._queued)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new runs; the threads run what is queued, then end."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()


def process_stopping() -> bool:
    """Whether the interpreter is exiting: a server's main thread returns once the server has
    stopped serving. Runs still going then finish; none starts.

    The main thread counts as ended only after the interpreter's exit hooks, and the first of
    them switches off ``concurrent.futures`` (asgiref publishes through it) and then waits for
    its threads: in that window a run could no longer publish yet saw no stop, and a review's
    Ctrl-C failed a streamed web chat message. ``threading._SHUTTING_DOWN`` (Python 3.9+, the
    only sign of that window; read, never written) is set before those hooks run.
    """
    return getattr(threading, "_SHUTTING_DOWN", False) or not threading.main_thread().is_alive()


def _embedded() -> _Pool:
    global _embedded_pool
    if _embedded_pool is None:
        _embedded_pool = _Pool(settings.GATEWAY_EMBEDDED_WORKERS)
    return _embedded_pool


def queue_depth() -> int:
    """Agent runs waiting: in the Celery queue (kombu's Redis list, priority sub-lists included),
    or on the embedded default's thread pool."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    if settings.GATEWAY_AGENT_DISPATCH == "celery" and settings.CELERY_BROKER_URL.startswith("redis"):
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            sep = "\x06\x16"
            names = [queue] + [f"{queue}{sep}{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)]
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            return int(sum(pipe.execute()))
        finally:
            client.close()
    return _embedded_pool.queued() if _embedded_pool is not None else 0


class QueueDepthCollector:
    """``gateway_queue_depth`` for ``/metrics``, read on each scrape (the app registers it in
    ``apps.logs.metrics.SCRAPE_REGISTRY``). A broker that is down drops this gauge only."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth = queue_depth()
        except Exception:  # the broker is down: the process's own counters are still worth serving
            logger.warning("queue depth unavailable", exc_info=True)
            return
        family = GaugeMetricFamily("gateway_queue_depth", "Agent runs waiting in the queue.", labels=["queue"])
        family.add_metric([settings.CELERY_TASK_DEFAULT_QUEUE], depth)
        yield family
