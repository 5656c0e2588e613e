"""Token quotas and cost budgets: reserve before the model call, settle after, refuse when used up."""
import time
from datetime import date, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings as django_settings
from django.utils import timezone

from apps.agents.prompt import build_prompt
from apps.agents.recovery import stuck_messages
from apps.agents.runtime import agent_run
from apps.agents.tasks import Tries, try_once
from apps.conversations import pipeline
from apps.conversations.apis import stored_reply_within
from apps.conversations.models import Message
from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import QuotaExceeded, error_from_event
from apps.logs.models import AuditEvent, LLMCall
from apps.quotas import budgets
from apps.quotas.budgets import QuotaRefused, estimate_prompt_tokens
from apps.quotas.ledger import ADMITTED, MISSING, REFUSED, CounterCall, LocalLedger, RateCall
from apps.quotas.models import QuotaCredit, UsageDaily
from apps.quotas.policies import user_limits
from apps.quotas.selectors import budget_states
from apps.quotas.services import quota_reset
from tests.helpers import Listener

SERVICES = bool(django_settings.REDIS_URL)


def send(channel, user, text="hello", api_key=None):
    msg = NormalizedMessage(channel=channel.kind, channel_id=channel.slug, user_id=str(user.pk), message=text)
    return pipeline.accept(msg, channel=channel, principal=user, api_key=api_key).message


def live(user):
    """{"tokens/day": (used, reserved), ...} of the user's budgets."""
    return {f"{s['meter']}/{s['period']}": (s["used"], s["reserved"]) for s in budget_states(user_limits(user))}


# --- the ledger itself, in both forms ------------------------------------------------------


@pytest.fixture
def key(settings):
    return lambda name: f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:ledger-test:{name}"


FAR = 4_000_000_000  # counter expiry (epoch seconds) well in the future


class TestLedger:
    def test_missing_counters_ask_for_a_seed_then_admit_and_reserve(self, ledger, key):
        calls = [CounterCall(key("a"), limit=100, amount=30, expires_at=FAR)]
        assert ledger.admit(calls, reservation_id="r1", now=1000, reservation_expires_at=2000).outcome == MISSING
        seeded = [CounterCall(key("a"), 100, 30, FAR, seed=50)]
        assert ledger.admit(seeded, reservation_id="r1", now=1000, reservation_expires_at=2000).outcome == ADMITTED
        assert ledger.read([key("a")], now=1000) == [(50, 30)]

    def test_admits_while_anything_is_left_so_overshoot_is_at_most_one_reservation(self, ledger, key):
        outcomes = []
        for n in range(5):
            calls = [CounterCall(key("b"), 100, 40, FAR, seed=0)]
            outcomes.append(ledger.admit(calls, reservation_id=f"r{n}", now=1000, reservation_expires_at=2000).outcome)
        assert outcomes == [ADMITTED, ADMITTED, ADMITTED, REFUSED, REFUSED]
        assert ledger.read([key("b")], now=1000) == [(0, 120)]

    def test_reservations_in_flight_refuse_a_reservation_but_not_a_check(self, ledger, key):
        """Held by calls in flight is not used up: a reservation is refused (``spent`` False, to
        be tried again), a check at entry admits; the used amount alone refuses both."""
        held = [CounterCall(key("g"), 100, 100, FAR, seed=10)]
        assert ledger.admit(held, reservation_id="r1", now=1000, reservation_expires_at=2000).outcome == ADMITTED
        busy = ledger.admit(held, reservation_id="r2", now=1000, reservation_expires_at=2000)
        assert (busy.outcome, busy.spent) == (REFUSED, False)
        assert ledger.admit(held, reservation_id="", now=1000, reservation_expires_at=2000).outcome == ADMITTED
        ledger.settle([key("g")], reservation_id="r1", amounts=[90])
        for rid in ("r3", ""):
            spent = ledger.admit(held, reservation_id=rid, now=1000, reservation_expires_at=2000)
            assert (spent.outcome, spent.spent) == (REFUSED, True)

    def test_all_or_nothing_across_counters(self, ledger, key):
        ok = CounterCall(key("c1"), 1000, 10, FAR, seed=0)
        full = CounterCall(key("c2"), 100, 10, FAR, seed=100)
        admission = ledger.admit([ok, full], reservation_id="r1", now=1000, reservation_expires_at=2000)
        assert (admission.outcome, admission.refused_index) == (REFUSED, 1)
        assert ledger.read([key("c1"), key("c2")], now=1000) == [(0, 0), (100, 0)]

    def test_rates_count_in_order_and_stop_at_the_first_one_over(self, ledger, key):
        minute, second = RateCall(key("rate-a"), limit=2, expires_at=FAR), RateCall(key("rate-b"), 1, FAR)
        assert ledger.count_rates([minute, second], now=1000) == [1, 1]
        assert ledger.count_rates([minute, second], now=1000) == [2, 2]  # the second is over
        assert ledger.count_rates([minute, second], now=1000) == [3]  # the first is over: the second not counted
        assert ledger.rate_counts([key("rate-a"), key("rate-b"), key("rate-none")], now=1000) == [3, 2, 0]

    def test_a_rate_counter_lasts_until_its_expiry(self, ledger, key):
        ends = int(time.time()) + 60
        ledger.count_rates([RateCall(key("rate-w"), 10, ends)], now=ends - 60)
        if isinstance(ledger, LocalLedger):
            assert ledger.rate_counts([key("rate-w")], now=ends - 1) == [1]
            assert ledger.rate_counts([key("rate-w")], now=ends) == [0]
            assert ledger.count_rates([RateCall(key("rate-w"), 10, ends + 60)], now=ends) == [1]  # a new window
        else:
            assert 0 < ledger.client.ttl(key("rate-w")) <= 60

    def test_the_embedded_rate_counters_are_bounded(self, key, monkeypatch):
        from apps.quotas import ledger as ledgers

        monkeypatch.setattr(ledgers, "MAX_LOCAL_RATE_COUNTERS", 100)
        local = LocalLedger()
        day = RateCall(key("rate-day"), 2, 1010)  # a day's window, ending soon
        assert local.count_rates([day, day, day], now=1000) == [1, 2, 3]  # refused for the day
        for n in range(250):  # then a flood of new addresses, each counter for a day
            local.count_rates([RateCall(key(f"rate-ip{n}"), 10, FAR)], now=1000)
        assert len(local._rates) <= 100
        assert local.rate_counts([key("rate-ip249"), key("rate-day")], now=1000) == [1, 3]  # still refused

    def test_settle_books_real_usage_and_frees_the_reservation(self, ledger, key):
        ledger.admit([CounterCall(key("d"), 100, 60, FAR, seed=0)], reservation_id="r1", now=1000,
                     reservation_expires_at=2000)
        ledger.settle([key("d")], reservation_id="r1", amounts=[25])
        assert ledger.read([key("d")], now=1000) == [(25, 0)]
        ledger.settle([key("d")], reservation_id="r1", amounts=[0])  # a repeated settle books nothing twice
        assert ledger.read([key("d")], now=1000) == [(25, 0)]

    def test_a_crashed_workers_reservation_expires(self, ledger, key):
        calls = [CounterCall(key("e"), 100, 100, FAR, seed=0)]
        assert ledger.admit(calls, reservation_id="dead", now=1000, reservation_expires_at=1600).outcome == ADMITTED
        assert ledger.admit(calls, reservation_id="r2", now=1500, reservation_expires_at=2100).outcome == REFUSED
        assert ledger.admit(calls, reservation_id="r2", now=1601, reservation_expires_at=2201).outcome == ADMITTED
        assert ledger.read([key("e")], now=1601) == [(0, 100)]

    def test_take_used_zeroes_and_reports(self, ledger, key):
        ledger.admit([CounterCall(key("f"), 100, 10, FAR, seed=70)], reservation_id="r1", now=1000,
                     reservation_expires_at=2000)
        assert ledger.take_used([key("f"), key("missing")]) == [70, None]
        assert ledger.read([key("f")], now=1000) == [(0, 10)]


# --- the model call ------------------------------------------------------------------------


@pytest.mark.django_db
class TestModelCall:
    def test_usage_is_settled_to_the_real_count_and_rolled_up(self, api_channel, customer, policy):
        policy("user", customer, tokens_per_day=100_000, tokens_per_month=1_000_000, cost_limit=Decimal("5"))
        message = send(api_channel, customer, "count my tokens")
        agent_run(message.id)
        call = LLMCall.objects.get(message=message)
        assert call.status == "ok" and call.total_tokens > 0
        assert call.cost > 0  # the fixture's model is priced: the cost budget has something to settle
        assert live(customer) == {"tokens/day": (call.total_tokens, 0), "tokens/month": (call.total_tokens, 0),
                                  "cost/month": (f"{call.cost:.6f}", "0.000000")}
        row = UsageDaily.objects.get(user=customer)
        assert (row.calls, row.total_tokens, row.cost, row.channel_id) == (1, call.total_tokens, call.cost,
                                                                            api_channel.pk)

    def test_calls_of_one_day_add_up_on_one_row_per_key(self, api_channel, customer):
        day = date(2026, 3, 1)
        record = dict(user_id=customer.pk, api_key_id=None, channel_id=api_channel.pk, day=day)
        budgets.usage_upsert(**record, prompt_tokens=3, completion_tokens=4, total_tokens=7,
                             cost=Decimal("0.000125")).execute()
        budgets.usage_upsert(**record, prompt_tokens=10, completion_tokens=1, total_tokens=11,
                             cost=Decimal("1.5")).execute()
        budgets.usage_upsert(**{**record, "channel_id": None}, prompt_tokens=1, completion_tokens=1,
                             total_tokens=2, cost=Decimal(0)).execute()
        budgets.usage_upsert(**{**record, "day": date(2026, 3, 2)}, prompt_tokens=1, completion_tokens=1,
                             total_tokens=2, cost=Decimal(0)).execute()
        row = UsageDaily.objects.get(date=day, channel=api_channel)
        assert (row.user_id, row.api_key_id, row.key) == (customer.pk, None, f"{customer.pk}:-:{api_channel.pk}")
        assert (row.calls, row.prompt_tokens, row.completion_tokens, row.total_tokens) == (2, 13, 5, 18)
        assert row.cost == Decimal("1.500125")
        assert UsageDaily.objects.filter(user=customer).count() == 3

    def test_estimate_covers_what_the_model_then_counts(self, api_channel, customer):
        message = send(api_channel, customer, "a fairly ordinary question with a few words in it")
        agent_run(message.id)
        call = LLMCall.objects.get(message=message)
        assert estimate_prompt_tokens(build_prompt(message)) >= call.prompt_tokens
        assert message.agent.max_tokens >= call.completion_tokens

    def test_refused_before_the_model_is_called_and_the_sender_is_told(self, api_channel, customer, policy,
                                                                       fake_llm):
        policy("user", customer, tokens_per_day=5)
        first = send(api_channel, customer, "first")  # both admitted at entry: nothing used yet
        message = send(api_channel, customer, "second")
        assert agent_run(first.id) is not None  # spends more than the 5 tokens
        waiter = Listener.waiting_for(message)
        before = fake_llm.stats()["requests"]
        assert agent_run(message.id) is None
        assert fake_llm.stats()["requests"] == before  # the model was never called
        message.refresh_from_db()
        assert (message.status, message.error_code) == ("failed", "quota_exceeded")
        [event] = waiter.drain()
        assert event["type"] == "agent.error" and event["code"] == "quota_exceeded"
        assert "resets at" in event["message"] and 1 <= event["retry_after"] <= 86400
        assert not LLMCall.objects.filter(message=message).exists()
        # A resend of the request (its Idempotency-Key) reads the failure back: told the same.
        told, retold = error_from_event(event), error_from_event(async_to_sync(stored_reply_within)(message.id, 1))
        assert (retold.status, retold.code, retold.message) == (429, "quota_exceeded", told.message)
        assert retold.headers() == {}  # no Retry-After: this message is not tried again

    def test_failed_call_releases_its_reservation(self, api_channel, customer, policy):
        policy("user", customer, tokens_per_day=100_000)
        message = send(api_channel, customer, "boom [[fail:500]]")
        agent_run(message.id)
        assert live(customer) == {"tokens/day": (0, 0)}
        assert not UsageDaily.objects.exists()

    def test_a_crashed_workers_reservation_holds_the_budget_until_it_expires(
        self, api_channel, customer, employee, policy, settings, agent
    ):
        def reserve(message):
            return budgets.reserve_model_call(message, agent.model, build_prompt(message),
                                              max_tokens=agent.max_tokens)

        policy("user", customer, tokens_per_day=agent.max_tokens)  # one call's estimate fills it
        message = send(api_channel, customer, "hold")
        reserve(message)  # ... and its worker dies: never settled, never released
        with pytest.raises(QuotaRefused):
            reserve(message)
        settings.GATEWAY_QUOTA_RESERVATION_TTL_SECONDS = 0  # reservations lapse at once
        policy("user", employee, tokens_per_day=agent.max_tokens)
        other = send(api_channel, employee, "hold")
        reserve(other)  # dies too
        assert reserve(other).counters  # the dead one has expired: admitted again

    def test_a_run_whose_budget_calls_in_flight_hold_is_queued_again_then_answered(
            self, api_channel, customer, policy, agent, settings):
        """Held by another call's reservation, not used up: the run gives its claim back and is
        tried again shortly (holding no worker meanwhile); once that call settles, it answers."""
        policy("user", customer, tokens_per_day=agent.max_tokens)  # one call's estimate fills it
        first, second = send(api_channel, customer, "first"), send(api_channel, customer, "second")
        held = budgets.reserve_model_call(first, agent.model, build_prompt(first), max_tokens=agent.max_tokens)
        delay, tries = try_once(second.id, Tries())
        second.refresh_from_db()
        assert second.status == "accepted" and 0 < delay <= 5 and tries.budget_since is not None
        assert not LLMCall.objects.filter(message=second).exists()
        # Left to this task chain: recovery, however old the message, does not start another.
        assert second.lease_until is not None
        later = timezone.now() + timedelta(seconds=settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS + delay)
        assert second not in stuck_messages(now=later)
        assert first in stuck_messages(now=later)  # sent, never run: recovery's
        budgets.release_model_call(held)  # the call in flight ends (here: it failed, spending nothing)
        assert try_once(second.id, tries) is None
        second.refresh_from_db()
        assert second.status == "answered"

    def test_a_run_still_held_off_tells_the_sender_to_retry_shortly(self, api_channel, customer, policy, agent,
                                                                     settings):
        policy("user", customer, tokens_per_day=agent.max_tokens)
        first, second = send(api_channel, customer, "first"), send(api_channel, customer, "second")
        budgets.reserve_model_call(first, agent.model, build_prompt(first), max_tokens=agent.max_tokens)
        waiter = Listener.waiting_for(second)
        held_long = Tries(budget_waits=9, budget_since=time.time() - settings.GATEWAY_QUOTA_BUSY_WAIT_SECONDS)
        assert try_once(second.id, held_long) is None
        second.refresh_from_db()
        assert (second.status, second.error_code) == ("failed", "quota_exceeded")
        [event] = waiter.drain()
        assert "in progress" in event["message"] and event["retry_after"] == settings.GATEWAY_QUOTA_BUSY_RETRY_SECONDS

    def test_cost_budget(self, api_channel, customer, policy, llm_model):
        llm_model.input_price_per_1k = llm_model.output_price_per_1k = Decimal("1.0")
        llm_model.save()
        policy("user", customer, cost_limit=Decimal("0.01"), cost_period="day")
        first = send(api_channel, customer, "spend")
        assert agent_run(first.id) is not None
        with pytest.raises(QuotaExceeded) as refused:
            send(api_channel, customer, "spend more")
        assert "cost budget" in refused.value.message and refused.value.retry_after >= 1

    def test_api_key_budget_charges_the_key_that_sent_it(self, api_channel, customer, policy):
        from apps.identities.models import ApiKey

        key, _raw = ApiKey.generate(user=customer)
        other, _raw = ApiKey.generate(user=customer)
        policy("api_key", key, tokens_per_month=1)
        first = send(api_channel, customer, "via key", api_key=key)
        agent_run(first.id)
        with pytest.raises(QuotaExceeded) as refused:
            send(api_channel, customer, "again", api_key=key)
        assert "API key" in refused.value.message
        send(api_channel, customer, "other key", api_key=other)
        assert UsageDaily.objects.get(api_key=key).calls == 1

    def test_channel_budget_is_shared(self, api_channel, customer, employee, policy):
        policy("channel", api_channel, tokens_per_day=1)
        agent_run(send(api_channel, customer, "first").id)
        with pytest.raises(QuotaExceeded) as refused:
            send(api_channel, employee, "second")
        assert "channel" in refused.value.message

    def test_role_default_budget_counts_per_user(self, api_channel, customer, make_user, policy):
        policy("role", "customer", tokens_per_day=1)
        agent_run(send(api_channel, customer, "first").id)
        with pytest.raises(QuotaExceeded):
            send(api_channel, customer, "second")
        send(api_channel, make_user("customer"), "someone else")

    def test_counters_lost_are_rebuilt_from_the_rollup(self, api_channel, customer, policy, settings):
        policy("user", customer, tokens_per_day=10_000)
        agent_run(send(api_channel, customer, "remember me").id)
        used = live(customer)["tokens/day"][0]
        settings.GATEWAY_LIMIT_KEY_PREFIX += "-after-redis-lost-its-data"
        assert live(customer) == {"tokens/day": (used, 0)}


@pytest.mark.django_db
class TestRefusedAtEntry:
    def test_http_429_with_the_reset_time(self, api_channel, customer, policy, key_client, assert_error):
        policy("role", "customer", tokens_per_day=10)
        budgets.usage_upsert(user_id=customer.pk, api_key_id=None, channel_id=None, prompt_tokens=5,
                             completion_tokens=5, total_tokens=10, cost=Decimal(0)).execute()
        client, _ = key_client(customer)
        response = client.post("/api/v1/messages", {"message": "x"}, format="json")
        error = assert_error(response, 429, "quota_exceeded")
        assert "token quota (10 tokens per day)" in error["message"]
        assert int(response["Retry-After"]) == error["retry_after"] <= 86400
        assert not Message.objects.exists()

    def test_budget_store_down_fails_closed(self, api_channel, customer, policy, key_client, settings, assert_error):
        policy("user", customer, tokens_per_day=1000)
        settings.GATEWAY_QUOTA_REDIS_URL = "redis://127.0.0.1:1/0"
        client, _ = key_client(customer)
        error = assert_error(client.post("/api/v1/messages", {"message": "x"}, format="json"), 503,
                             "service_unavailable")
        assert error["retry_after"] == settings.GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS

    def test_budget_store_down_in_the_worker_refuses_the_call_and_keeps_the_message(
        self, api_channel, customer, policy, settings, fake_llm
    ):
        policy("user", customer, tokens_per_day=1000)
        message = send(api_channel, customer, "accepted before the outage")
        settings.GATEWAY_QUOTA_REDIS_URL = "redis://127.0.0.1:1/0"
        before = fake_llm.stats()["requests"]
        assert agent_run(message.id) is None
        assert fake_llm.stats()["requests"] == before
        message.refresh_from_db()
        assert (message.status, message.error_code, message.text) == ("failed", "service_unavailable",
                                                                       "accepted before the outage")

    def test_budget_store_down_can_fail_open(self, api_channel, customer, policy, settings):
        policy("user", customer, tokens_per_day=1000)
        settings.GATEWAY_QUOTA_REDIS_URL = "redis://127.0.0.1:1/0"
        settings.GATEWAY_BUDGET_FAIL_OPEN = True
        reply = agent_run(send(api_channel, customer, "go on").id)
        assert reply is not None
        assert UsageDaily.objects.get(user=customer).total_tokens == reply.total_tokens  # still recorded


@pytest.mark.django_db(transaction=True)
class TestRefusedOnTheWebchat:
    async def test_entry_refusal_is_an_error_frame(self, webchat_channel, policy, open_chat):
        await sync_to_async(policy)("role", "customer", tokens_per_day=0)
        chat = await open_chat(webchat_channel)
        await chat.send_json_to({"type": "message", "message": "hi", "client_id": "c-1"})
        frame = await chat.receive_json_from(5)
        assert (frame["type"], frame["code"], frame["client_id"]) == ("error", "quota_exceeded", "c-1")
        assert frame["retry_after"] >= 1 and "resets at" in frame["message"]
        await chat.disconnect()

    async def test_worker_refusal_reaches_the_socket_with_retry_after(self, webchat_channel, policy, open_chat):
        chat = await open_chat(webchat_channel)
        await chat.send_json_to({"type": "message", "message": "hi"})
        ack = await chat.receive_json_from(5)
        message = await sync_to_async(Message.objects.select_related("sender").get)(pk=ack["message_id"])
        await sync_to_async(policy)("user", message.sender, tokens_per_day=0)
        await sync_to_async(agent_run)(message.id)
        frames = [await chat.receive_json_from(5)]
        while frames[-1]["type"] != "error" and len(frames) < 10:  # e.g. a reset between fallback attempts
            frames.append(await chat.receive_json_from(5))
        assert "reply" not in [frame["type"] for frame in frames]
        error = frames[-1]
        assert (error["type"], error["code"], error["reply_to"]) == ("error", "quota_exceeded", str(message.id))
        assert error["retry_after"] >= 1
        await chat.disconnect()


@pytest.mark.django_db
class TestReset:
    def test_reset_forgives_current_usage_audited_and_survives_a_rebuild(self, api_channel, customer, admin_user,
                                                                        policy, settings):
        policy("user", customer, tokens_per_day=10_000, tokens_per_month=100_000)
        agent_run(send(api_channel, customer, "use some").id)
        used = live(customer)["tokens/day"][0]
        forgiven = quota_reset(user=customer, actor=admin_user)
        assert forgiven == {"tokens/day": used, "tokens/month": used}
        assert live(customer) == {"tokens/day": (0, 0), "tokens/month": (0, 0)}
        event = AuditEvent.objects.get(action="quota.reset")
        assert (event.actor, event.target_id, event.before) == (admin_user, str(customer.pk), forgiven)
        assert QuotaCredit.objects.filter(subject=f"user:{customer.pk}").count() == 2
        settings.GATEWAY_LIMIT_KEY_PREFIX += "-rebuilt"
        assert live(customer) == {"tokens/day": (0, 0), "tokens/month": (0, 0)}
        assert UsageDaily.objects.get(user=customer).total_tokens == used  # what was spent stays on record

    def test_refused_user_can_send_again_after_a_reset(self, api_channel, customer, admin_user, policy):
        policy("user", customer, tokens_per_day=1)
        agent_run(send(api_channel, customer, "first").id)
        with pytest.raises(QuotaExceeded):
            send(api_channel, customer, "second")
        quota_reset(user=customer, actor=admin_user)
        send(api_channel, customer, "third")


def test_periods_reset_at_utc_midnight_and_month_start():
    day = budgets.Counter("user:x", "tokens", "day", date(2026, 12, 31), 10)
    month = budgets.Counter("user:x", "tokens", "month", date(2026, 12, 1), 10)
    assert day.resets_at.isoformat() == month.resets_at.isoformat() == "2027-01-01T00:00:00+00:00"


def test_estimates_are_generous_for_non_ascii_text():
    assert budgets.text_tokens("你好世界") >= 4  # one token per character at least
    assert budgets.text_tokens("one two three four") >= 4
