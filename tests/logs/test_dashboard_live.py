"""Live dashboards: today's numbers without waiting for a rollup; filters that follow the staff
member across pages and into the CSV; a conversation's audit trail."""
import csv
import io

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.logs.models import DailyMessageStats
from apps.logs.services import audit


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def send(api_key, text):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    response = api.post("/api/v1/messages", {"message": text}, format="json")
    assert response.status_code == 202
    agent_run(response.json()["message_id"])
    return response.json()


@pytest.mark.django_db
def test_todays_messages_are_on_the_overview_before_any_rollup(staff_client, api_key_for, customer, api_channel):
    key = api_key_for(customer)
    send(key, "first")
    assert not DailyMessageStats.objects.exists()  # no rollup has run
    summary = staff_client.get("/dashboard/").context["summary"]
    assert (summary["messages"], summary["replies"]) == (1, 1)
    assert summary["tokens"] > 0
    send(key, "second")
    summary = staff_client.get("/dashboard/").context["summary"]
    assert (summary["messages"], summary["replies"]) == (2, 2)
    page = staff_client.get("/dashboard/").content.decode()
    assert 'data-live="3000"' in page and "dashboard/live.js" in page


@pytest.mark.django_db
def test_a_period_ending_before_today_is_not_live(staff_client):
    page = staff_client.get("/dashboard/?from=2020-01-01&to=2020-01-10").content.decode()
    assert "data-live" not in page


@pytest.mark.django_db
def test_filters_carry_across_pages_and_into_the_csv(staff_client, api_key_for, customer, api_channel, agent):
    send(api_key_for(customer), "hello filters")
    query = f"?channel={api_channel.slug}&agent={agent.slug}&model=fake-gpt"
    response = staff_client.get("/dashboard/conversations/" + query)
    page = response.content.decode()
    assert f'href="/dashboard/cost/?channel={api_channel.slug}&amp;agent={agent.slug}&amp;model=fake-gpt"' in page
    assert len(response.context["tables"][0].rows) == 1
    rows = list(csv.reader(io.StringIO(
        staff_client.get("/dashboard/conversations/" + query + "&export=conversations").content.decode())))
    assert len(rows) == 2 and rows[1][2] == api_channel.slug
    for other in ("agent=nobody", "model=other-model"):
        filtered = staff_client.get(f"/dashboard/conversations/?{other}&export=conversations").content.decode()
        assert len(list(csv.reader(io.StringIO(filtered)))) == 1  # the header only


@pytest.mark.django_db
def test_a_conversation_shows_its_calls_and_audit_events(staff_client, api_key_for, customer, api_channel,
                                                         admin_user):
    sent = send(api_key_for(customer), "audit me")
    from apps.conversations.models import Conversation

    conversation = Conversation.objects.get(pk=sent["conversation_id"])
    audit(action="handoff.started", actor=admin_user, target=conversation)
    response = staff_client.get(f"/dashboard/conversations/{conversation.pk}/")
    tables = {t.name: t for t in response.context["tables"]}
    assert len(tables["calls"].rows) == 1 and tables["calls"].rows[0]["total_tokens"] > 0
    assert [r["action"] for r in tables["audit"].rows] == ["handoff.started"]


@pytest.mark.django_db
def test_the_cost_and_errors_pages_and_their_csv_apply_the_filters(staff_client, api_key_for, customer,
                                                                   api_channel, webchat_channel):
    from apps.logs.rollups import recent_days, rollup_days

    send(api_key_for(customer), "costs something")
    send(api_key_for(customer), "fails [[fail:500]]")
    rollup_days(recent_days())

    def csv_rows(path, query):
        return list(csv.reader(io.StringIO(staff_client.get(path, {**query, "export": query["export"]})
                                           .content.decode())))[1:]

    assert len(csv_rows("/dashboard/cost/", {"export": "model"})) == 1
    assert csv_rows("/dashboard/cost/", {"export": "model", "channel": webchat_channel.slug}) == []
    assert csv_rows("/dashboard/cost/", {"export": "model", "model": "other-model"}) == []
    assert len(csv_rows("/dashboard/cost/", {"export": "user", "user": customer.username})) == 1
    assert csv_rows("/dashboard/cost/", {"export": "user", "user": "nobody-by-that-name"}) == []
    assert staff_client.get("/dashboard/cost/", {"channel": webchat_channel.slug}).context["summary"]["calls"] == 0
    assert len(csv_rows("/dashboard/errors/", {"export": "failed_calls"})) >= 1
    assert csv_rows("/dashboard/errors/", {"export": "failed_calls", "agent": "nobody"}) == []


@pytest.mark.django_db
def test_a_page_without_a_field_for_a_filter_keeps_it_in_its_form_and_on_the_way_to_a_conversation(
        staff_client, api_key_for, customer, api_channel):
    sent = send(api_key_for(customer), "keep my filters")
    page = staff_client.get("/dashboard/cost/", {"channel": api_channel.slug, "status": "answered"}).content.decode()
    assert f'<input type="hidden" name="channel" value="{api_channel.slug}">' in page  # "Apply" keeps it
    assert '<input type="hidden" name="status" value="answered">' in page
    assert "status <b>answered</b> (kept for the other pages; not applied here)" in page
    listing = staff_client.get("/dashboard/conversations/", {"channel": api_channel.slug})
    row = listing.context["tables"][0].rows[0]
    assert row["url"] == f"/dashboard/conversations/{sent['conversation_id']}/?channel={api_channel.slug}"
    detail = staff_client.get(row["url"]).content.decode()
    assert f'href="/dashboard/conversations/?channel={api_channel.slug}"' in detail
    assert staff_client.get("/dashboard/cost/", {"status": "nope"}).status_code == 400


@pytest.mark.django_db
def test_today_is_its_rollup_plus_the_rows_since_it(staff_client, api_key_for, customer, employee, api_channel):
    from apps.logs.models import DailyCallStats, RollupMark
    from apps.logs.rollups import recent_days, rollup_days

    send(api_key_for(customer), "before the rollup")
    rollup_days(recent_days())
    assert RollupMark.objects.filter(day=timezone.localdate()).exists()
    # The page must read today's rollup row, not rescan the day: a changed rollup shows.
    DailyMessageStats.objects.update(inbound=10)
    DailyCallStats.objects.update(calls=10)
    summary = staff_client.get("/dashboard/").context["summary"]
    assert summary["messages"] == 10
    send(api_key_for(customer), "after the rollup")  # live: on the page before any rollup
    send(api_key_for(employee), "a new face")
    response = staff_client.get("/dashboard/")
    assert response.context["summary"]["messages"] == 12
    today = response.context["tables"][0].rows[-1]
    assert today["calls"] == 12
    assert today["active_users"] == 2  # the customer wrote before and after the rollup: counted once
