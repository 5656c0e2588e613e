"""Usage a failed settle kept off the live counters: the counters are dropped and re-seeded."""
import pytest

from apps.quotas.budgets import settle_unsettled
from apps.quotas.ledger import ADMITTED, MISSING, CounterCall, LocalLedger, RedisLedger, get_ledger
from apps.quotas.models import UnsettledUsage

FAR = 4_000_000_000


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.services)])
def ledger(request, settings):
    if request.param == "local":
        return LocalLedger()
    import redis

    return RedisLedger(redis.Redis.from_url(settings.REDIS_URL))


def test_forget_drops_the_counter_and_its_reservations(ledger, settings):
    key = f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:unsettled-test:forget"
    calls = [CounterCall(key, 100, 30, FAR, seed=10)]
    assert ledger.admit(calls, reservation_id="r1", now=1000, reservation_expires_at=2000).outcome == ADMITTED
    ledger.forget([key])
    assert ledger.read([key], now=1000) == [None]
    assert ledger.admit([CounterCall(key, 100, 30, FAR)], reservation_id="r2", now=1000,
                       reservation_expires_at=2000).outcome == MISSING  # re-seeded from the rollup next


@pytest.mark.django_db
def test_recovery_drops_the_counters_a_failed_settle_missed(settings):
    key = f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:unsettled-test:recovery"
    ledger = get_ledger()
    ledger.admit([CounterCall(key, 100, 30, FAR, seed=0)], reservation_id="r1", now=1000, reservation_expires_at=2000)
    UnsettledUsage.objects.create(counter_keys=[key])
    assert settle_unsettled() == 1
    assert ledger.read([key], now=1000) == [None]
    assert not UnsettledUsage.objects.exists()
    assert settle_unsettled() == 0
