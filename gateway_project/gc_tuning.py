"""Python's garbage collector, set for a long-running server process.

Every few thousand allocations CPython scans the objects tracked since the last collection, and
now and then all of them: the hundreds of thousands that importing Django, the apps, the URL
configuration and the clients leave behind, which are never garbage. Profiling Daphne under load
found about a tenth of its CPU in those scans. After startup the process freezes what it holds (the
collector leaves it alone from then on, as ``gc.freeze`` documents for this purpose) and collects the
youngest generation less often; reference counting still frees almost everything at once.
"""
from __future__ import annotations

import gc
import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def tune_for_serving() -> None:
    """Call once the process has loaded what it keeps for life (the ASGI app, the Celery worker)."""
    if not settings.GATEWAY_GC_FREEZE:
        return
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(settings.GATEWAY_GC_GEN0_THRESHOLD, gen1, gen2)
    logger.debug("garbage collector tuned", extra={"frozen": gc.get_freeze_count()})
