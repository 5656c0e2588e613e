"""The embedded default's SQLite file is shared by the server's threads and the in-process agent
runs: a transaction that reads, then writes, while another thread is writing, waits its turn
instead of failing at once with "database is locked".

SQLite hands a deferred transaction (BEGIN) a read lock first; asked to write while another
connection is writing, it refuses at once rather than wait (waiting could deadlock), whatever the
busy timeout. The project's settings open every transaction with BEGIN IMMEDIATE on SQLite, so the
lock is waited for at the start. Run in a child process on a database of its own, with the
settings as `make run` loads them (DATABASE_URL=sqlite:///…), in CI's PostgreSQL phase too.
"""
import subprocess
import sys

from devtools.stack import BASE_DIR, base_env

SCRIPT = r"""
import threading

import django

django.setup()

from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection, transaction

call_command("migrate", verbosity=0)
writing, failures = threading.Event(), []


def writer():
    # A write transaction held open for a moment, as an agent run storing its reply.
    try:
        with transaction.atomic():
            Group.objects.create(name="written-by-the-run")
            writing.set()
            threading.Event().wait(0.5)
    except Exception as exc:
        failures.append(f"writer: {exc}")
    finally:
        writing.set()
        connection.close()


def reader_then_writer():
    # A transaction that looks, then writes (get_or_create), started while the other one writes.
    writing.wait(10)
    try:
        with transaction.atomic():
            Group.objects.filter(name="written-by-the-request").exists()
            Group.objects.get_or_create(name="written-by-the-request")
    except Exception as exc:
        failures.append(f"reader: {exc}")
    finally:
        connection.close()


threads = [threading.Thread(target=writer), threading.Thread(target=reader_then_writer)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
names = sorted(Group.objects.filter(name__startswith="written-by").values_list("name", flat=True))
print(failures or names)
"""


def test_a_transaction_that_reads_then_writes_waits_for_a_writer(tmp_path):
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'gateway.sqlite3'}")
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "['written-by-the-request', 'written-by-the-run']"
