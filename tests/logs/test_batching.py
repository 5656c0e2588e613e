"""Batcher: what a process gathers for Redis, written in batches, in order, never lost to a race."""
import threading

from apps.logs.batching import Batcher


def batcher(write):
    return Batcher("test", write=write, interval=lambda: 3600)  # the daemon thread sleeps through the test


def test_a_reader_flush_waits_for_a_write_already_under_way():
    written, started, release = [], threading.Event(), threading.Event()

    def write(batch):
        started.set()
        release.wait(10)
        written.extend(batch)

    batch = batcher(write)
    batch.add("row")
    first = threading.Thread(target=batch.flush)
    first.start()
    assert started.wait(10)
    reader_done = threading.Event()
    threading.Thread(target=lambda: (batch.flush(), reader_done.set())).start()
    assert not reader_done.wait(0.3)  # the row is on its way: the reader must not see an empty list
    release.set()
    first.join(10)
    assert reader_done.wait(10) and written == ["row"]


def test_a_failed_write_goes_out_first_with_the_next():
    attempts = []

    def write(batch):
        attempts.append(list(batch))
        if len(attempts) == 1:
            raise ConnectionError("redis is down")

    batch = batcher(write)
    batch.add("a")
    try:
        batch.flush()
    except ConnectionError:
        pass
    batch.add("b")
    batch.flush()
    assert attempts == [["a"], ["a", "b"]]


def test_a_full_batch_drops_what_comes_after():
    batch = Batcher("test", write=lambda rows: None, interval=lambda: 3600, max_size=2)
    for row in "abc":
        batch.add(row)
    assert batch.pending == ["a", "b"]
