"""Loaded with ``-p`` (pyproject's addopts), before Django reads its settings: gives each
pytest-xdist worker a Redis database of its own, so that two workers' rate-limit keys and Celery
queues never meet, and a channel-layer prefix of its own (pub/sub ignores the database number),
so that their channel groups do not either. Worker ``gwN`` uses the configured db + N; the PostgreSQL test
database is already one per worker (pytest-django adds the suffix). On the embedded default the
configuration generation (a file cache) is per worker too: another worker's change must not empty
this one's caches in the middle of a test that counts queries."""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")


def _shifted(url: str, by: int) -> str:
    parsed = urllib.parse.urlparse(url)
    db = int(parsed.path.strip("/") or 0)
    return parsed._replace(path=f"/{db + by}").geturl()


if _worker.startswith("gw") and _worker[2:].isdigit() and int(_worker[2:]):
    for _name in ("REDIS_URL", "CELERY_BROKER_URL"):
        if os.environ.get(_name, "").startswith("redis://"):
            os.environ[_name] = _shifted(os.environ[_name], int(_worker[2:]))
    # Pub/sub (the channel layer) ignores the database number: a prefix of its own as well.
    os.environ.setdefault("GATEWAY_CHANNEL_LAYER_PREFIX", f"asgi{_worker}")

if _worker:
    os.environ.setdefault("GATEWAY_CONFIG_GENERATION_DIR",
                          str(Path(__file__).resolve().parent.parent / "var" / f"config-generation-{_worker}"))
