"""The staff dashboards: who may see them, what they show, CSV export, date range."""
import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.conversations.models import Message
from apps.identities.roles import Role
from apps.logs.models import LLMCall, RequestLog
from apps.logs.request_log import request_log_flush
from apps.logs.rollups import recent_days, rollup_days
from apps.logs.services import audit

PAGES = ["/dashboard/", "/dashboard/cost/", "/dashboard/conversations/", "/dashboard/errors/"]


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def traffic(api_key_for, customer, api_channel, fake_llm):
    """Real traffic through the API: two answered messages, one failed model call, one refusal."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(customer)}")
    ids = []
    for text in ("where is my parcel", "thanks a lot", "break please [[fail:500]]"):
        response = api.post("/api/v1/messages", {"message": text}, format="json")
        assert response.status_code == 202
        ids.append(response.json()["message_id"])
        agent_run(ids[-1])
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer gw_nope_nope")
    import uuid

    ip = f"198.51.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"  # failed logins are limited per IP
    assert bad.post("/api/v1/messages", {"message": "x"}, format="json", REMOTE_ADDR=ip).status_code == 401
    request_log_flush()
    rollup_days(recent_days())
    return [Message.objects.get(pk=i) for i in ids]


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.mark.django_db
class TestWhoMaySee:
    @pytest.mark.parametrize("page", PAGES)
    def test_a_customer_is_refused(self, client, customer, page):
        client.force_login(customer)
        assert client.get(page).status_code == 403

    def test_staff_without_the_permission_is_refused(self, client, make_user):
        client.force_login(make_user(Role.EMPLOYEE, is_staff=True))
        assert client.get("/dashboard/").status_code == 403

    def test_an_employee_who_is_not_staff_is_refused_even_with_the_permission(self, client, employee):
        employee.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
        client.force_login(employee)
        assert client.get("/dashboard/").status_code == 403

    def test_staff_with_the_permission_may(self, client, make_user):
        user = make_user(Role.EMPLOYEE, is_staff=True)
        user.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
        client.force_login(user)
        assert client.get("/dashboard/").status_code == 200

    @pytest.mark.parametrize("page", PAGES)
    def test_anonymous_is_sent_to_log_in(self, client, page):
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    def test_a_customer_cannot_export_either(self, client, customer):
        client.force_login(customer)
        assert client.get("/dashboard/cost/?export=top_spenders").status_code == 403

    def test_a_customer_cannot_open_a_conversation(self, client, customer, traffic):
        client.force_login(customer)
        assert client.get(f"/dashboard/conversations/{traffic[0].conversation_id}/").status_code == 403


@pytest.mark.django_db
class TestPages:
    def test_overview_counts_messages_replies_failures_tokens_cost_and_refusals(self, staff_client, traffic):
        response = staff_client.get("/dashboard/")
        assert response.status_code == 200
        summary = response.context["summary"]
        assert (summary["messages"], summary["replies"], summary["failures"]) == (3, 2, 1)
        assert summary["tokens"] > 0 and summary["cost"] > 0 and summary["p50_ms"] is not None
        assert summary["rejections"] == 1
        charts = {c.name: c for c in response.context["charts"]}
        assert {"messages", "replies", "users", "latency", "tokens", "cost", "rejections"} <= set(charts)
        assert charts["messages"].datasets[0]["label"] == "api"
        assert charts["rejections"].datasets[0]["label"] == "unauthenticated"
        assert b"dashboard/vendor/chart.umd.min.js" in response.content
        assert b"cdn" not in response.content.lower()

    def test_cost_by_model_agent_user_channel_and_api_key(self, staff_client, traffic, customer):
        response = staff_client.get("/dashboard/cost/")
        tables = {t.name: t for t in response.context["tables"]}
        assert set(tables) == {"top_spenders", "model", "agent", "user", "channel", "api_key"}
        assert tables["top_spenders"].rows[0]["user__username"] == customer.username
        assert tables["model"].rows[0]["model"] == "fake-gpt"
        assert tables["model"].rows[0]["calls"] == LLMCall.objects.count()  # retries are attempts too
        assert tables["model"].rows[0]["failed_calls"] == LLMCall.objects.filter(status="error").count() >= 1
        key = traffic[0].api_key
        assert tables["api_key"].rows[0]["api_key__prefix"] == key.prefix
        assert tables["api_key"].rows[0]["cost"] == sum(c.cost for c in LLMCall.objects.all())

    def test_every_table_exports_as_csv(self, staff_client, traffic):
        for page in PAGES + [f"/dashboard/conversations/{traffic[0].conversation_id}/"]:
            for table in staff_client.get(page).context["tables"]:
                rows = read_csv(staff_client.get(page, {"export": table.name}))
                assert rows[0] == [heading for _key, heading in table.columns]
                assert len(rows) == len(table.rows) + 1

    def test_csv_cells_cannot_smuggle_formulas(self, staff_client, customer, api_channel):
        audit(action="=HYPERLINK(\"http://evil\")", actor=customer)
        rows = read_csv(staff_client.get("/dashboard/errors/", {"export": "audit"}))
        assert rows[1][1].startswith("'=")

    def test_unknown_export_and_bad_dates_are_clear_400s(self, staff_client):
        assert staff_client.get("/dashboard/", {"export": "nope"}).status_code == 400
        assert staff_client.get("/dashboard/", {"from": "yesterday"}).status_code == 400
        assert staff_client.get("/dashboard/", {"from": "2026-02-01", "to": "2026-01-01"}).status_code == 400
        assert staff_client.get("/dashboard/", {"from": "2020-01-01", "to": "2026-01-01"}).status_code == 400
        assert staff_client.get("/dashboard/conversations/", {"page": "x"}).status_code == 400
        assert staff_client.get("/dashboard/conversations/", {"status": "nope"}).status_code == 400

    @pytest.mark.parametrize("url, query", [
        ("/dashboard/conversations/", {"text": "a\x00b"}),
        ("/dashboard/conversations/", {"user": "\x00", "channel": "\x00", "agent": "\x00", "model": "\x00"}),
        ("/dashboard/conversations/", {"page": "99999999999999999999"}),
        ("/dashboard/errors/", {"action": "\x00"}),
        ("/dashboard/", {"k\x00": "v"}),
    ])
    def test_filters_the_database_cannot_take_are_400s_not_500s(self, staff_client, url, query):
        assert staff_client.get(url, query).status_code == 400

    def test_date_range_filters(self, staff_client, traffic):
        long_ago = (timezone.localdate() - timedelta(days=40)).isoformat()
        before = (timezone.localdate() - timedelta(days=30)).isoformat()
        response = staff_client.get("/dashboard/", {"from": long_ago, "to": before})
        assert response.context["summary"]["messages"] == 0
        assert len(response.context["tables"][0].rows) == 11  # one row per day

    def test_conversation_search_by_user_text_channel_and_status(self, staff_client, traffic, customer, employee):
        def found(**query):
            return [r["id"] for r in staff_client.get("/dashboard/conversations/", query).context["tables"][0].rows]

        conversation_ids = {str(m.conversation_id) for m in traffic}
        assert set(found()) == conversation_ids
        assert set(found(user=customer.username[:8])) == conversation_ids
        assert found(user=employee.username) == []
        assert found(text="PARCEL") == [str(traffic[0].conversation_id)]
        assert set(found(channel="api")) == conversation_ids and found(channel="web") == []
        assert found(status="failed") == [str(traffic[2].conversation_id)]

    def test_conversation_view_in_order_with_model_tokens_cost_latency(self, staff_client, traffic):
        message = traffic[0]
        response = staff_client.get(f"/dashboard/conversations/{message.conversation_id}/")
        assert response.status_code == 200
        messages, calls, _audit = response.context["tables"]
        assert [r["direction"] for r in messages.rows] == ["user", "agent"]
        reply = messages.rows[1]
        call = LLMCall.objects.get(message=message)
        assert reply["text"] == "Echo: where is my parcel" and reply["model"] == "fake-gpt"
        assert reply["total_tokens"] == call.total_tokens and reply["cost"] == call.cost
        assert reply["latency_ms"] is not None
        assert calls.rows[0]["status"] == "ok"
        assert b"Echo: where is my parcel" in response.content

    def test_unknown_conversation_is_404(self, staff_client):
        assert staff_client.get("/dashboard/conversations/00000000-0000-0000-0000-000000000000/").status_code == 404

    def test_errors_page_failed_calls_refusals_and_audit(self, staff_client, traffic, customer, admin_user):
        audit(action="apikey.revoked", actor=admin_user, target=customer, before={"active": True},
              after={"active": False})
        audit(action="tool.refused", actor=customer)
        response = staff_client.get("/dashboard/errors/")
        tables = {t.name: t for t in response.context["tables"]}
        assert tables["failed_calls"].rows and all(r["error"] for r in tables["failed_calls"].rows)
        assert tables["refusals_by_reason"].rows == [
            {"rejection": "unauthenticated", "channel_kind": "api", "status_code": 401, "requests": 1}]
        assert tables["refused_requests"].rows[0]["rejection"] == "unauthenticated"
        assert {"apikey.revoked", "tool.refused", "request.refused"} <= {r["action"] for r in tables["audit"].rows}
        filtered = staff_client.get("/dashboard/errors/", {"action": "apikey.revoked"}).context["tables"][3]
        assert [r["after"] for r in filtered.rows] == [{"active": False}]

    def test_request_log_rows_reach_the_errors_page(self, staff_client, traffic):
        assert RequestLog.objects.filter(rejection="unauthenticated").exists()


def test_chart_library_is_vendored_with_its_license():
    script = finders.find("dashboard/vendor/chart.umd.min.js")
    license_file = finders.find("dashboard/vendor/chart.js-LICENSE.md")
    assert script and license_file
    assert "MIT" in open(license_file).read()
