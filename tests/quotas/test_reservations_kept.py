"""A reservation is renewed while its call runs (``budgets.kept``), so only a dead process's lapses."""
import threading

import pytest
from django.db import connection

from apps.agents.prompt import build_prompt
from apps.agents.runtime import agent_run
from apps.logs.models import LLMCall
from apps.quotas import budgets
from apps.quotas.budgets import QuotaBusy
from apps.quotas.ledger import ADMITTED, REFUSED, CounterCall
from apps.quotas.policies import user_limits
from apps.quotas.selectors import budget_states
from tests.helpers import send, wait_until

FAR = 4_000_000_000  # counter expiry (epoch seconds) well in the future


def tokens_today(user) -> tuple[int, int]:
    """(used, reserved) of the user's tokens-per-day budget."""
    [state] = budget_states(user_limits(user))
    return state["used"], state["reserved"]


# --- the ledger, in both forms ----------------------------------------------------------------


@pytest.fixture
def key(settings):
    return lambda name: f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:renew-test:{name}"


def test_a_renewed_reservation_holds_past_its_first_expiry(ledger, key):
    keys = [key("a"), key("b")]
    calls = [CounterCall(k, 100, 100, FAR, seed=0) for k in keys]
    assert ledger.admit(calls, reservation_id="r1", now=1000, reservation_expires_at=1600).outcome == ADMITTED
    assert ledger.renew([(keys, "r1")], expires_at=2600) == 2  # on both counters
    assert ledger.admit(calls, reservation_id="r2", now=2000, reservation_expires_at=2600).outcome == REFUSED
    assert ledger.read(keys, now=2000) == [(0, 100), (0, 100)]
    assert ledger.admit(calls, reservation_id="r2", now=2601, reservation_expires_at=3200).outcome == ADMITTED


def test_a_settled_or_lapsed_reservation_is_not_brought_back(ledger, key):
    calls = [CounterCall(key("c"), 100, 60, FAR, seed=0)]
    ledger.admit(calls, reservation_id="settled", now=1000, reservation_expires_at=1600)
    ledger.settle([key("c")], reservation_id="settled", amounts=[25])
    ledger.admit(calls, reservation_id="lapsed", now=1000, reservation_expires_at=1100)
    assert ledger.read([key("c")], now=1200) == [(25, 0)]  # the lapsed one purged
    assert ledger.renew([([key("c")], "settled"), ([key("c")], "lapsed")], expires_at=5000) == 0
    for now in (1200, 5001):  # nothing held again, and nothing given back twice once the renewed expiry passes
        assert ledger.read([key("c")], now=now) == [(25, 0)]
    ledger.forget([key("c")])
    assert ledger.renew([([key("c")], "settled")], expires_at=5000) == 0
    assert ledger.read([key("c")], now=1200) == [None]  # a dropped counter is not made again


# --- the model call ---------------------------------------------------------------------------


def reserve(message, agent):
    return budgets.reserve_model_call(message, agent.model, build_prompt(message), max_tokens=agent.max_tokens)


@pytest.mark.django_db
def test_only_a_held_reservation_is_renewed_and_never_once_settled(api_channel, customer, agent, policy):
    policy("user", customer, tokens_per_day=agent.max_tokens)  # one call's estimate fills it
    first, second = send(api_channel, customer, "first"), send(api_channel, customer, "second")
    reservation = reserve(first, agent)
    with budgets.kept(reservation):
        assert budgets.renew_held() == 1
        budgets.release_model_call(reservation)  # its call ends while a renewal is on its way
        assert budgets.renew_held() == 0
    assert budgets.renew_held() == 0
    assert tokens_today(customer) == (0, 0)
    budgets.release_model_call(reserve(second, agent))  # the budget is free


@pytest.mark.django_db(transaction=True)
def test_a_call_longer_than_the_ttl_holds_its_reservation_until_it_settles(api_channel, customer, agent, policy,
                                                                            settings):
    """The model answers after 2.5 TTLs: meanwhile a second call is held off, not admitted against
    a reservation that lapsed; once the first settles, the ledger holds nothing and the second gets in."""
    settings.GATEWAY_QUOTA_RESERVATION_TTL_SECONDS = 2  # renewed every 2/3 s
    policy("user", customer, tokens_per_day=agent.max_tokens)  # one call's estimate fills it
    first, second = send(api_channel, customer, "long answer [[delay:5]]"), send(api_channel, customer, "second")

    def run_first():
        try:
            agent_run(first.id)
        finally:
            connection.close()

    running = threading.Thread(target=run_first)
    running.start()
    try:
        assert wait_until(lambda: tokens_today(customer)[1] > 0)  # the first call is in flight
        held_off = []

        def second_admitted():
            try:
                reservation = reserve(second, agent)
            except QuotaBusy:
                held_off.append(True)
                return None
            return reservation, tokens_today(customer)

        admitted = wait_until(second_admitted, timeout=30, interval=0.1)
    finally:
        running.join(30)
    assert admitted, "the first call's usage never freed the budget"
    reservation, (used, reserved) = admitted
    call = LLMCall.objects.get(message=first)
    assert held_off and call.status == "ok"
    assert (used, reserved) == (call.total_tokens, reservation.tokens)  # admitted only once the first settled
    budgets.release_model_call(reservation)
    assert tokens_today(customer) == (call.total_tokens, 0)
