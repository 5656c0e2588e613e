"""Pages beyond the admin's filters, choices and model deletion pages that named a channel, agent
or tool the staff member may not use (apps/identities/scoped_pickers.py; docs/security.md "Names
of what she may not use"): the route tester's list of rules, a user's or group's deletion page
(their object permissions, their admin log), the dashboards' conversation filters."""
import csv
import io
from decimal import Decimal

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from guardian.shortcuts import assign_perm

from apps.conversations.models import Conversation
from apps.identities.models import User
from apps.identities.roles import Role
from apps.routing.models import Route
from tests.security.test_staff_pickers import desk_member, page, superuser

pytestmark = pytest.mark.django_db

# The hidden agent's and channel's names and slugs, and a route's name to that agent.
NAMES = ("Secret ops", "secret-ops", "VIP desk", "vip-desk", "board-escalations")


def assert_names_none(text: str, where: str) -> None:
    assert [name for name in NAMES if name in text] == [], where


def test_the_route_tester_lists_no_rule_she_may_not_see(client, make_user, agent, webchat_channel, hidden):
    """Every enabled rule was listed with its name, agent and conditions: a route to a hidden
    agent ("the sender may not use agent secret-ops"), one on a hidden channel ("channel is vip-desk")."""
    secret, vip = hidden
    Route.objects.create(name="board-escalations", priority=1, agent=secret)
    Route.objects.create(name="vip-only", priority=2, agent=agent, channel=vip)
    Route.objects.create(name="front desk", priority=3, agent=agent, keyword="hello")
    sender = make_user(Role.CUSTOMER)
    form = {"channel": webchat_channel.pk, "sender": sender.username, "message": "hello", "metadata": "{}"}
    client.force_login(desk_member(make_user, "view_route"))
    shown = client.post("/admin/routing/route/test/", form)
    assert shown.status_code == 200
    text = shown.content.decode()
    assert "front desk" in text and "Agent: assistant" in text, text  # the decision and her rules stay
    assert_names_none(text, "route tester")
    assert "vip-only" not in text
    client.force_login(superuser(make_user))
    assert "board-escalations" in client.post("/admin/routing/route/test/", form).content.decode()


def test_deleting_a_user_or_group_names_no_object_permission_on_what_she_may_not_use(
        client, make_user, agent, hidden):
    """Guardian's object permissions point to their object by content type and id, not by a
    foreign key: a user's "change_agent" on the hidden agent, a group's "view_channel" on the
    hidden channel, were listed by name ("Secret ops | someone | change_agent")."""
    secret, vip = hidden
    someone = make_user(Role.CUSTOMER)
    assign_perm("agents.change_agent", someone, secret)
    team = Group.objects.create(name="vip team")
    assign_perm("connectors.view_channel", team, vip)
    # She holds these globally: neither outranks her, so she may delete them.
    client.force_login(desk_member(make_user, "view_user", "delete_user", "view_group", "delete_group",
                                   "view_agent", "change_agent", "view_channel"))
    for url, kind in ((f"/admin/identities/user/{someone.pk}/delete/", "user object permission"),
                      (f"/admin/auth/group/{team.pk}/delete/", "group object permission")):
        shown = page(client, url)
        assert_names_none(shown, url)
        assert f"<li>{kind}</li>" in shown, url  # refused, by type
        client.post(url, {"post": "yes"})
    assert User.objects.filter(pk=someone.pk).exists() and Group.objects.filter(pk=team.pk).exists()
    client.force_login(superuser(make_user))
    assert "Secret ops" in page(client, f"/admin/identities/user/{someone.pk}/delete/")


def logged(user, obj) -> None:
    """An admin log entry of ``user`` changing ``obj``, as the admin writes it."""
    LogEntry.objects.create(user=user, content_type=ContentType.objects.get_for_model(obj), object_id=str(obj.pk),
                            object_repr=str(obj), action_flag=CHANGE, change_message="Changed name.")


def test_deleting_a_user_names_no_admin_log_entry_of_what_she_may_not_see(client, make_user, webchat_channel,
                                                                          agent, hidden):
    """Deleting a user takes their admin log along, each entry named by its object: the hidden agent,
    a conversation on the hidden channel ("vip-desk / … / id")."""
    secret, vip = hidden
    former = make_user(Role.CUSTOMER)
    talk = Conversation.objects.create(channel=vip, user=former, agent=secret)
    for obj in (secret, talk):
        logged(former, obj)
    Conversation.objects.filter(pk=talk.pk).update(user=make_user(Role.CUSTOMER))  # the entries remain hers
    client.force_login(desk_member(make_user, "view_user", "delete_user"))
    url = f"/admin/identities/user/{former.pk}/delete/"
    shown = page(client, url)
    assert_names_none(shown, url)
    assert "<li>log entry</li>" in shown
    # An entry about what she may use is listed as before.
    LogEntry.objects.filter(user=former).delete()
    logged(former, agent)
    assert "Assistant" in page(client, url)


def test_the_dashboards_conversation_filters_offer_only_what_she_may_use(client, make_user, agent,
                                                                         webchat_channel, hidden):
    client.force_login(desk_member(make_user, "view_dashboard"))
    shown = page(client, "/dashboard/conversations/")
    assert "assistant" in shown and webchat_channel.slug in shown
    assert_names_none(shown, "dashboard conversation filters")
    client.force_login(superuser(make_user))
    shown = page(client, "/dashboard/conversations/")
    assert "secret-ops" in shown and "vip-desk" in shown


def test_the_dashboards_count_everything_but_name_only_what_she_may_use(client, make_user, agent, webchat_channel,
                                                                       hidden):
    """The cost page's tables by agent and by channel, and the overview's messages per channel,
    named every channel and agent; counts and costs stay whole, the hidden ones summed into one
    row. Filtering by a hidden one finds nothing, as filtering by one that does not exist does."""
    from django.utils import timezone

    from apps.logs.models import DailyCallStats, DailyMessageStats

    secret, vip = hidden
    yesterday = timezone.localdate() - timezone.timedelta(days=1)
    for channel, answering, cost in ((webchat_channel, agent, "1.00"), (vip, secret, "2.00")):
        DailyCallStats.objects.create(day=yesterday, channel=channel, agent=answering, model="fake-gpt",
                                      provider="fake", calls=1, total_tokens=10, cost=Decimal(cost))
        DailyMessageStats.objects.create(day=yesterday, channel=channel, inbound=3)
    client.force_login(desk_member(make_user, "view_dashboard"))
    for url in ("/dashboard/cost/", "/dashboard/", "/dashboard/cost/?export=agent", "/dashboard/cost/?export=channel"):
        shown = page(client, url)
        assert_names_none(shown, url)
    cost = page(client, "/dashboard/cost/?export=channel")
    _header, *rows = csv.reader(io.StringIO(cost))
    costs = {row[0]: Decimal(row[-1]) for row in rows}
    assert costs == {webchat_channel.slug: Decimal("1"), "(those you may not use)": Decimal("2")}, cost
    def calls(query: str) -> int:
        return client.get(f"/dashboard/cost/?{query}").context["summary"]["calls"]

    assert [calls(q) for q in ("channel=vip-desk", "agent=secret-ops", "channel=no-such-channel")] == [0, 0, 0]
    assert calls(f"channel={webchat_channel.slug}") == 1 and calls("") == 2
    client.force_login(superuser(make_user))
    shown = page(client, "/dashboard/cost/")
    assert "secret-ops" in shown and "vip-desk" in shown


def test_daily_usage_lists_no_row_of_a_channel_she_may_not_use(client, make_user, webchat_channel, customer, hidden):
    """The durable usage rollup listed every channel's rows, with the channel's name."""
    from django.utils import timezone

    from apps.quotas.models import UsageDaily

    today = timezone.localdate()
    for key, channel in (("a", webchat_channel), ("b", hidden[1]), ("c", None)):
        UsageDaily.objects.create(date=today, key=key, user=customer, channel=channel, calls=1)
    client.force_login(desk_member(make_user, "view_usagedaily"))
    listed = client.get("/admin/quotas/usagedaily/")
    assert_names_none(listed.content.decode(), "daily usage")
    assert {row.key for row in listed.context["cl"].result_list} == {"a", "c"}
    hidden_row = UsageDaily.objects.get(key="b")
    assert client.get(f"/admin/quotas/usagedaily/{hidden_row.pk}/change/").status_code in (302, 404)


@pytest.fixture
def answered_by_hidden(make_user, webchat_channel, hidden):
    """A conversation on a channel she may use, answered by the hidden agent, with a failed call."""
    from django.utils import timezone

    from apps.logs.models import LLMCall

    secret, _vip = hidden
    customer = make_user(Role.CUSTOMER)
    talk = Conversation.objects.create(channel=webchat_channel, user=customer, agent=secret,
                                       last_message_at=timezone.now())
    LLMCall.objects.create(conversation=talk, channel=webchat_channel, agent=secret, user=customer,
                           model="vault-gpt", provider="vault", status="error", error="boom")
    return talk


def test_the_dashboards_rows_on_her_channels_name_no_agent_she_may_not_use(client, make_user, answered_by_hidden):
    """A conversation on a channel she may use can be answered by an agent she may not (a route to
    it, for a sender who may use it): the conversations page and its CSV, the conversation's page,
    and the errors page's failed model calls and their CSV named that agent in the row."""
    talk = answered_by_hidden
    client.force_login(desk_member(make_user, "view_dashboard"))
    for url in ("/dashboard/conversations/", "/dashboard/conversations/?export=conversations",
                f"/dashboard/conversations/{talk.pk}/", "/dashboard/errors/",
                "/dashboard/errors/?export=failed_calls"):
        shown = page(client, url)
        assert str(talk.pk) in shown, url  # the row is still there, its agent unnamed
        assert_names_none(shown, url)
    client.force_login(superuser(make_user))
    for url in ("/dashboard/conversations/", f"/dashboard/conversations/{talk.pk}/", "/dashboard/errors/"):
        assert "secret-ops" in page(client, url), url


def test_the_admins_rows_on_her_channels_name_no_agent_she_may_not_use(client, make_user, answered_by_hidden):
    """The same rows in the admin: the conversations' and model calls' lists named the agent in
    their agent column ("Secret ops"), the conversation's page in its handoff panel ("secret-ops")."""
    talk = answered_by_hidden
    client.force_login(desk_member(make_user, "view_conversation", "change_conversation", "view_llmcall"))
    for url in ("/admin/conversations/conversation/", f"/admin/conversations/conversation/{talk.pk}/change/",
                "/admin/logs/llmcall/"):
        shown = page(client, url)
        assert "(one you may not use)" in shown, url
        assert_names_none(shown, url)
    client.force_login(superuser(make_user))
    for url in ("/admin/conversations/conversation/", f"/admin/conversations/conversation/{talk.pk}/change/",
                "/admin/logs/llmcall/"):
        assert "ecret" in page(client, url) and "(one you may not use)" not in page(client, url), url


def test_limits_on_a_channel_she_may_not_use_are_not_listed(client, make_user, webchat_channel, hidden):
    """Quota policies and IP rules of a hidden channel were listed read-only, with its name."""
    from apps.quotas.models import IpRule, QuotaPolicy

    mine = QuotaPolicy.objects.create(scope="channel", channel=webchat_channel, request_rate="60/m")
    theirs = QuotaPolicy.objects.create(scope="channel", channel=hidden[1], request_rate="60/m")
    everyone = QuotaPolicy.objects.create(scope="role", role=Role.CUSTOMER, request_rate="60/m")
    rules = {key: IpRule.objects.create(action="deny", cidr=cidr, channel=channel) for key, cidr, channel in
             (("mine", "192.0.2.0/24", webchat_channel), ("theirs", "198.51.100.0/24", hidden[1]),
              ("everywhere", "203.0.113.0/24", None))}
    client.force_login(desk_member(make_user, "view_quotapolicy", "view_iprule"))
    policies = client.get("/admin/quotas/quotapolicy/")
    assert_names_none(policies.content.decode(), "quota policies")
    assert set(policies.context["cl"].result_list) == {mine, everyone}
    listed = client.get("/admin/quotas/iprule/")
    assert_names_none(listed.content.decode(), "IP rules")
    assert set(listed.context["cl"].result_list) == {rules["mine"], rules["everywhere"]}
    for url in (f"/admin/quotas/quotapolicy/{theirs.pk}/change/", f"/admin/quotas/iprule/{rules['theirs'].pk}/change/"):
        assert client.get(url).status_code in (302, 404), url
