"""Budget alerts: a budget reaching GATEWAY_BUDGET_ALERT_PERCENTS of its limit is recorded once, by
the model call that passed the mark, and sent, signed, to the webhook when one is set."""
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.agents.runtime import agent_run
from apps.conversations import pipeline
from apps.conversations.normalized import NormalizedMessage
from apps.identities.roles import Role
from apps.quotas import alerts, budgets
from apps.quotas.ledger import CounterCall
from apps.quotas.models import BudgetAlert

FAR = 4_000_000_000
SECRET = "a-test-webhook-secret-of-some-length"


def send(channel, user, text="hello"):
    msg = NormalizedMessage(channel=channel.kind, channel_id=channel.slug, user_id=str(user.pk), message=text)
    return pipeline.accept(msg, channel=channel, principal=user).message


def spend(message, model, tokens: int):
    """One model call of ``message`` that used ``tokens``, reserved and settled as a run does."""
    reservation = budgets.reserve_model_call(message, model, [{"role": "user", "content": "x"}], max_tokens=1)
    result = SimpleNamespace(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens)
    budgets.settle_model_call(reservation, result)
    return reservation


class TestTheLedgerSaysWhatWasUsed:
    def test_settle_returns_each_counters_use_after_and_nothing_for_a_repeat(self, ledger, settings):
        key = f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:alert-test:{os.getpid()}:a"
        ledger.forget([key])
        ledger.admit([CounterCall(key, 100, 60, FAR, seed=10)], reservation_id="r1", now=1000,
                     reservation_expires_at=2000)
        assert ledger.settle([key, key + ":missing"], reservation_id="r1", amounts=[25, 5]) == [35, None]
        if type(ledger).__name__ == "RedisLedger":  # the embedded ledger is never asked twice
            assert ledger.settle([key], reservation_id="r1", amounts=[25]) == [None]

    def test_concurrent_settlements_pass_each_mark_once(self, ledger, settings):
        settings.GATEWAY_BUDGET_ALERT_PERCENTS = [50, 80, 100]
        key = f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:alert-test:{os.getpid()}:b"
        ledger.forget([key])
        counter = SimpleNamespace(key=key, limit=1000)

        def one_call(n):
            rid = f"r{n}"
            ledger.admit([CounterCall(key, 1000, 1, FAR, seed=0)], reservation_id=rid, now=1000,
                         reservation_expires_at=2000)
            return alerts.crossed([counter], [70], ledger.settle([key], reservation_id=rid, amounts=[70]))

        with ThreadPoolExecutor(8) as pool:
            crossings = [c for found in pool.map(one_call, range(20)) for c in found]
        assert sorted(c.percent for c in crossings) == [50, 80, 100]  # 20 × 70 = 1,400: each mark passed once
        assert {c.percent: c.used for c in crossings} == {50: 560, 80: 840, 100: 1050}


@pytest.mark.django_db
class TestRecorded:
    def test_each_mark_is_recorded_once_by_the_call_that_passes_it(self, api_channel, customer, policy, llm_model,
                                                                 django_capture_on_commit_callbacks):
        policy("user", customer, tokens_per_day=1000)
        message = send(api_channel, customer)
        with django_capture_on_commit_callbacks(execute=True):
            spend(message, llm_model, 500)
            assert not BudgetAlert.objects.exists()
            spend(message, llm_model, 350)  # 850: past 80%
            spend(message, llm_model, 100)  # 950
            spend(message, llm_model, 100)  # 1,050: past 100%
        rows = list(BudgetAlert.objects.order_by("percent").values_list("percent", "used", "limit", "user_id",
                                                                         "meter", "period"))
        assert rows == [(80, 850, 1000, customer.pk, "tokens", "day"), (100, 1050, 1000, customer.pk, "tokens", "day")]
        assert all(a.next_attempt_at is None for a in BudgetAlert.objects.all())  # no webhook: nothing to send

    def test_one_call_past_both_marks_records_both_and_a_repeat_records_none(
            self, api_channel, customer, policy, llm_model, django_capture_on_commit_callbacks):
        policy("user", customer, tokens_per_day=100)
        message = send(api_channel, customer)
        with django_capture_on_commit_callbacks(execute=True):
            reservation = spend(message, llm_model, 120)
            alerts.record(alerts.crossed(reservation.counters, [120], [120]))  # as if the settle ran again
        assert sorted(BudgetAlert.objects.values_list("percent", flat=True)) == [80, 100]

    def test_a_limit_raised_in_the_period_is_alerted_again_at_its_own_marks(
            self, api_channel, customer, policy, llm_model, django_capture_on_commit_callbacks):
        budget = policy("user", customer, tokens_per_day=1000)
        message = send(api_channel, customer)
        with django_capture_on_commit_callbacks(execute=True):
            spend(message, llm_model, 850)
            spend(message, llm_model, 200)  # 1,050: both marks of 1,000
        budget.tokens_per_day = 2000  # staff raise the budget that filled up
        budget.save()
        with django_capture_on_commit_callbacks(execute=True):
            spend(message, llm_model, 600)  # 1,650: past 80% of 2,000
            spend(message, llm_model, 100)  # 1,750: nothing new
        rows = sorted(BudgetAlert.objects.values_list("limit", "percent", "used"))
        assert rows == [(1000, 80, 850), (1000, 100, 1050), (2000, 80, 1650)]

    def test_alerts_off_when_no_percents_are_set(self, api_channel, customer, policy, llm_model, settings,
                                                 django_capture_on_commit_callbacks):
        settings.GATEWAY_BUDGET_ALERT_PERCENTS = []
        policy("user", customer, tokens_per_day=100)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 120)
        assert not BudgetAlert.objects.exists()

    def test_an_agent_run_past_the_key_and_channel_budgets_records_theirs(
            self, api_channel, customer, policy, agent, key_client, django_capture_on_commit_callbacks):
        client, key = key_client(customer)
        policy("api_key", key, tokens_per_month=1)
        policy("channel", api_channel, tokens_per_day=1_000_000)
        accepted = client.post("/api/v1/messages", {"message": "hello"}, format="json")
        assert accepted.status_code == 202
        with django_capture_on_commit_callbacks(execute=True):
            agent_run(accepted.json()["message_id"])
        alerted = set(BudgetAlert.objects.values_list("subject", "percent", "api_key_id", "period"))
        assert alerted == {(f"api_key:{key.pk}", 80, key.pk, "month"), (f"api_key:{key.pk}", 100, key.pk, "month")}


@pytest.mark.services  # ends a PostgreSQL session
@pytest.mark.django_db(transaction=True)
def test_a_database_blip_as_the_mark_is_passed_does_not_lose_the_alert(api_channel, customer, policy, llm_model):
    """The call's usage rides out a dropped connection (through_outage); its alert does too."""
    import psycopg
    from django.db import connection

    policy("user", customer, tokens_per_day=1000)
    reservation = budgets.reserve_model_call(send(api_channel, customer), llm_model, [{"role": "user", "content": "x"}],
                                             max_tokens=1)
    db = connection.settings_dict
    connection.ensure_connection()
    with psycopg.connect(host=db["HOST"] or None, port=db["PORT"] or None, user=db["USER"] or None,
                         password=db["PASSWORD"] or None, dbname=db["NAME"], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", [connection.connection.info.backend_pid])
    result = SimpleNamespace(prompt_tokens=900, completion_tokens=0, total_tokens=900)
    budgets.settle_model_call(reservation, result, write_usage=False)  # its alert is the first write after
    assert list(BudgetAlert.objects.values_list("percent", "used")) == [(80, 900)]


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver: records each POST; answers the statuses queued in ``server.statuses``."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(self.server.answer)))
        self.end_headers()
        self.wfile.write(self.server.answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def hook(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.received, server.statuses, server.answer = [], [], b""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/alerts?token=t0ken"
    settings.GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET = SECRET
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.django_db
class TestSent:
    def test_sent_once_signed_with_what_staff_need(self, hook, api_channel, customer, policy, llm_model, caplog,
                                                   django_capture_on_commit_callbacks):
        policy("user", customer, tokens_per_day=1000)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 900)
        assert alerts.send_due() == 1
        assert alerts.send_due() == 0  # sent: not again
        (headers, body), = hook.received
        signed = hmac.new(SECRET.encode(), headers["X-Gateway-Timestamp"].encode() + b"." + body,
                          hashlib.sha256).hexdigest()
        assert headers["X-Gateway-Signature"] == f"sha256={signed}"
        alert = json.loads(body)
        assert {k: alert[k] for k in ("type", "meter", "period", "percent", "limit", "used")} == {
            "type": "budget.threshold_reached", "meter": "tokens", "period": "day", "percent": 80,
            "limit": "1000", "used": "900"}
        assert alert["subject"] == {"type": "user", "id": str(customer.pk), "name": customer.username}
        assert BudgetAlert.objects.get().sent_at is not None
        assert SECRET not in caplog.text and SECRET not in body.decode()

    @pytest.mark.parametrize("answer", [b"ok", b"<html><body>Accepted</body></html>"])
    def test_a_receiver_answering_200_with_text_got_it_once(self, hook, answer, api_channel, customer, policy,
                                                            llm_model, django_capture_on_commit_callbacks):
        hook.answer = answer  # as chat webhooks answer: the status says it was taken, not the body
        policy("user", customer, tokens_per_day=1000)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 900)
        assert alerts.send_due() == 1
        BudgetAlert.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        assert alerts.send_due() == 0 and len(hook.received) == 1
        alert = BudgetAlert.objects.get()
        assert (alert.sent_at is not None, alert.attempts, alert.last_error) == (True, 1, "")

    def test_alerts_recorded_before_a_webhook_was_set_are_not_sent_by_it(
            self, hook, api_channel, customer, policy, llm_model, settings, django_capture_on_commit_callbacks):
        url, settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL = settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL, ""
        policy("user", customer, tokens_per_day=1000)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 900)  # no webhook yet: the admin has it
        settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL = url
        assert alerts.send_due() == 0 and hook.received == []
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 200)  # 1,100: past 100%, with the webhook set
        assert alerts.send_due() == 1
        assert [json.loads(body)["percent"] for _headers, body in hook.received] == [100]

    def test_a_webhook_url_no_request_can_name_is_a_failed_send_the_admin_shows(
            self, hook, api_channel, customer, policy, llm_model, settings, django_capture_on_commit_callbacks):
        """A host httpx refuses before sending (an IDNA label it cannot encode): the send fails with
        a last error for the admin, as an unreachable one does, instead of escaping the pass."""
        policy("user", customer, tokens_per_day=1000)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 900)
        settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL = "https://\u2603.example/alerts?token=t0ken"
        assert alerts.send_due() == 0
        alert = BudgetAlert.objects.get()
        assert (alert.sent_at, alert.attempts) == (None, 1)
        assert "invalid URL" in alert.last_error and "t0ken" not in alert.last_error

    def test_a_failed_send_is_tried_again_later_then_given_up(self, hook, api_channel, customer, policy, llm_model,
                                                               settings, django_capture_on_commit_callbacks):
        settings.GATEWAY_BUDGET_ALERT_MAX_ATTEMPTS = 2
        policy("user", customer, tokens_per_day=1000)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 900)
        hook.statuses = [500, 503]
        assert alerts.send_due() == 0
        alert = BudgetAlert.objects.get()
        assert (alert.attempts, alert.sent_at) == (1, None)
        assert alert.last_error == f"HTTP 500 from 127.0.0.1:{hook.server_port}"
        assert "t0ken" not in alert.last_error  # the URL's query is never written down
        assert alerts.send_due() == 0 and len(hook.received) == 1  # not due yet
        BudgetAlert.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        assert alerts.send_due() == 0 and len(hook.received) == 2
        BudgetAlert.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        assert alerts.send_due() == 0 and len(hook.received) == 2  # its attempts are used up
        assert BudgetAlert.objects.get().attempts == 2

    def test_a_pass_stops_at_its_first_failed_send(self, hook, api_channel, customer, policy, llm_model,
                                                   django_capture_on_commit_callbacks):
        policy("user", customer, tokens_per_day=100)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 120)  # past 80% and 100%: two alerts due
        hook.statuses = [503]  # down: the next alert would wait out the same failure (a timeout)
        assert alerts.send_due() == 0 and len(hook.received) == 1
        assert sorted(BudgetAlert.objects.values_list("attempts", flat=True)) == [0, 1]  # the other one kept
        assert alerts.send_due() == 1 and len(hook.received) == 2  # back: the one not tried goes out
        BudgetAlert.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        assert alerts.send_due() == 1 and len(hook.received) == 3
        assert BudgetAlert.objects.filter(sent_at__isnull=True).count() == 0

    def test_a_password_in_the_url_is_never_written_down(self, hook, api_channel, customer, policy, llm_model,
                                                         settings, caplog, django_capture_on_commit_callbacks):
        settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL = f"http://alerts:pa55word@127.0.0.1:{hook.server_port}/alerts"
        policy("user", customer, tokens_per_day=1000)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 900)
        hook.statuses = [500]
        assert alerts.send_due() == 0
        assert BudgetAlert.objects.get().last_error == f"HTTP 500 from 127.0.0.1:{hook.server_port}"
        assert "pa55word" not in caplog.text
        (headers, _body), = hook.received
        assert headers["Authorization"].startswith("Basic ")  # the receiver still gets them

    def test_a_channel_limits_alerts_to_staff_who_may_use_it(self, hook, client, make_user, api_channel, customer,
                                                             policy, llm_model, django_capture_on_commit_callbacks):
        from django.contrib.auth.models import Permission

        policy("channel", api_channel, tokens_per_day=1000)
        with django_capture_on_commit_callbacks(execute=True):
            spend(send(api_channel, customer), llm_model, 900)
        api_channel.visibility = "admin"
        api_channel.save(update_fields=["visibility"])
        staff = make_user(Role.EMPLOYEE, is_staff=True)  # may not use an admin channel
        staff.user_permissions.add(Permission.objects.get(codename="view_budgetalert"))
        client.force_login(staff)
        listed = client.get(reverse("admin:quotas_budgetalert_changelist"))
        assert listed.status_code == 200 and "0 budget alerts" in listed.content.decode()
        admin = make_user(Role.ADMIN, is_staff=True, is_superuser=True)
        client.force_login(admin)
        page = client.get(reverse("admin:quotas_budgetalert_changelist")).content.decode()
        assert "1 budget alert" in page and "900 / 1000" in page and "due" in page


@pytest.mark.parametrize("env, complaint", [
    ({"GATEWAY_BUDGET_ALERT_PERCENTS": "80,150"}, "whole percents from 1 to 100"),
    ({"GATEWAY_BUDGET_ALERT_WEBHOOK_URL": "https://hooks.example/alerts"}, "needs GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET"),
    *[({"GATEWAY_BUDGET_ALERT_WEBHOOK_URL": url, "GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET": SECRET},
       "an http:// or https:// URL") for url in ("hooks.example/alerts", "htps://hooks.example/alerts",
                                                 "https://hooks.example:443a/alerts", "https:///alerts",
                                                 "https://hooks.example/alerts?t=a b", "https://hooks..example/alerts",
                                                 f"https://{'h' * 64}.example/alerts")],
])
def test_settings_refuse_what_cannot_work(env, complaint):
    done = subprocess.run([sys.executable, "manage.py", "check"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert done.returncode != 0 and complaint in done.stderr
