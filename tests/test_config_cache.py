"""Configuration kept per process (gateway_project.config_cache): fewer queries per message, and
every change still applies: at once in the process that made it, within
GATEWAY_CONFIG_CHECK_SECONDS in the others (simulated here by writing the shared generation the
way another process's commit does)."""
import pytest
from django.contrib.auth.models import Permission
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.agents.models import agent_by_slug, agent_tools
from apps.connectors.models import Channel, channel_by_slug
from apps.identities.permissions import role_rank, user_access, visibility_allows
from apps.identities.roles import Role, ensure_role_groups
from apps.identities.services import identity_create_customer
from gateway_project import config_cache

pytestmark = pytest.mark.django_db(transaction=True)


def another_process_committed_a_change():
    """What another process does after its commit: a new shared generation token."""
    caches["config"].set(config_cache.GENERATION_KEY, f"other-{id(object())}", None)


class TestKeptUntilChanged:
    def test_a_second_lookup_asks_no_query(self, api_channel):
        assert channel_by_slug("api").pk == api_channel.pk
        with CaptureQueriesContext(connection) as queries:
            again = channel_by_slug("api", kind="api")
        assert again.pk == api_channel.pk and len(queries) == 0

    def test_each_caller_gets_its_own_copy(self, api_channel):
        first = channel_by_slug("api")
        first.name = "changed by one caller"
        assert channel_by_slug("api").name == api_channel.name

    def test_a_save_here_applies_at_once(self, api_channel):
        assert channel_by_slug("api").enabled
        api_channel.enabled = False
        api_channel.save()
        assert not channel_by_slug("api").enabled

    def test_a_change_elsewhere_applies_after_the_check_interval(self, api_channel, settings):
        settings.GATEWAY_CONFIG_CHECK_SECONDS = 3600
        assert channel_by_slug("api").enabled
        Channel.objects.filter(pk=api_channel.pk).update(enabled=False)  # no signal: "elsewhere"
        another_process_committed_a_change()
        assert channel_by_slug("api").enabled  # not looked at yet: within the interval
        settings.GATEWAY_CONFIG_CHECK_SECONDS = 0
        assert not channel_by_slug("api").enabled

    def test_queryset_update_then_config_changed(self, agent):
        assert agent_by_slug(agent.slug) is not None
        type(agent).objects.filter(pk=agent.pk).update(enabled=False)
        assert agent_by_slug(agent.slug) is not None  # an update() sends no signal ...
        config_cache.config_changed()
        assert agent_by_slug(agent.slug) is None  # ... which is why callers say so

    def test_tool_membership_changes_apply(self, tool_agent, tools):
        before = {t.slug for t in agent_tools(tool_agent)}
        removed = tool_agent.tools.first()
        tool_agent.tools.remove(removed)
        assert {t.slug for t in agent_tools(tool_agent)} == before - {removed.slug}


class TestUserAccess:
    def test_role_and_permissions_without_queries_the_second_time(self, employee):
        assert role_rank(employee) == 1
        fresh = type(employee).objects.get(pk=employee.pk)
        with CaptureQueriesContext(connection) as queries:
            assert role_rank(fresh) == 1
            assert visibility_allows(fresh, "internal") and not visibility_allows(fresh, "admin")
        assert len(queries) == 0

    def test_a_new_role_applies_at_once(self, customer):
        assert not visibility_allows(customer, "internal")
        customer.groups.add(ensure_role_groups()[Role.EMPLOYEE])
        fresh = type(customer).objects.get(pk=customer.pk)
        assert visibility_allows(fresh, "internal") and role_rank(fresh) == 1

    def test_a_granted_permission_applies_at_once(self, customer):
        fresh = type(customer).objects.get(pk=customer.pk)
        assert not fresh.has_perm("identities.use_admin_agents")
        customer.user_permissions.add(Permission.objects.get(codename="use_admin_agents"))
        fresh = type(customer).objects.get(pk=customer.pk)
        assert user_access(fresh) and fresh.has_perm("identities.use_admin_agents")

    def test_a_disabled_user_has_no_permission_even_when_kept(self, employee):
        assert visibility_allows(employee, "internal")
        type(employee).objects.filter(pk=employee.pk).update(is_active=False)
        fresh = type(employee).objects.get(pk=employee.pk)
        assert not visibility_allows(fresh, "internal")  # is_active is read from the row, not kept

    def test_a_first_time_customer_is_not_a_configuration_change(self, api_channel):
        another_process_committed_a_change()
        before = caches["config"].get(config_cache.GENERATION_KEY)
        identity = identity_create_customer(channel=api_channel, external_id="first-timer")
        assert role_rank(identity.user) == 0
        assert caches["config"].get(config_cache.GENERATION_KEY) == before


class TestSharedCacheDown:
    def test_nothing_is_kept_while_the_generation_cannot_be_read(self, api_channel, settings):
        """A change made elsewhere while Redis is unreachable could go unseen: read the database."""
        settings.GATEWAY_CONFIG_CHECK_SECONDS = 3600
        # A Redis nobody listens on (port 9, refused); Django swaps its cache handlers on this change.
        unreachable = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:9/0",
                       "OPTIONS": {"socket_connect_timeout": 0.5}}
        settings.CACHES = {"default": unreachable, "config": unreachable}
        config_cache.clear()
        assert channel_by_slug("api").enabled
        Channel.objects.filter(pk=api_channel.pk).update(enabled=False)  # no signal
        assert not channel_by_slug("api").enabled  # read again, not kept


class TestBounded:
    def test_a_miss_is_not_kept(self, agent):
        """Unknown names (chosen by callers) do not fill the cache, and a row that appears without a
        signal (bulk_create) is found."""
        assert channel_by_slug("not-yet") is None
        Channel.objects.bulk_create([Channel(slug="not-yet", name="Late", kind="api", default_agent=agent)])
        assert channel_by_slug("not-yet").name == "Late"

    def test_never_more_entries_than_the_limit(self, settings, make_user):
        settings.GATEWAY_CONFIG_CACHE_MAX_ENTRIES = 3
        users = [make_user(Role.CUSTOMER) for _ in range(5)]
        for user in users:
            assert role_rank(type(user).objects.get(pk=user.pk)) == 0
            assert len(config_cache._entries) <= 3


def test_an_anonymous_user_has_no_role_and_no_permission():
    from django.contrib.auth.models import AnonymousUser

    assert role_rank(AnonymousUser()) == -1
    assert not visibility_allows(AnonymousUser(), "public")


class TestApiKeys:
    def test_a_key_is_looked_up_once_and_each_request_gets_its_own_copy(self, customer, api_key_for):
        from apps.identities.authentication import api_key_user

        raw = api_key_for(customer)
        user, key = api_key_user(raw)
        user.first_name = "changed by one request"
        with CaptureQueriesContext(connection) as queries:
            again_user, again_key = api_key_user(raw)
        assert len(queries) == 0  # last_used_at was written a moment ago: not again within the minute
        assert again_key.pk == key.pk and again_user.pk == customer.pk and again_user.first_name != user.first_name

    def test_revoking_the_key_or_blocking_the_user_applies_at_once(self, customer, api_key_for):
        from rest_framework.exceptions import AuthenticationFailed

        from apps.identities.access import Blocked
        from apps.identities.authentication import api_key_user
        from apps.identities.models import ApiKey
        from apps.identities.services import api_key_revoke, user_block

        revoked, kept = api_key_for(customer), api_key_for(customer)
        api_key_user(revoked), api_key_user(kept)
        api_key_revoke(key=ApiKey.objects.get(prefix=revoked.split("_")[1]), actor=None)
        with pytest.raises(AuthenticationFailed):
            api_key_user(revoked)
        api_key_user(kept)
        user_block(user=customer, actor=None, reason="abuse")
        with pytest.raises(Blocked):
            api_key_user(kept)


class TestChannelIdentities:
    def test_a_known_sender_is_looked_up_once_and_a_moved_identity_applies_at_once(self, webchat_channel, customer):
        from apps.identities.models import ChannelIdentity
        from apps.identities.services import identity_link, identity_user

        identity = identity_create_customer(channel=webchat_channel, external_id="U0KNOWN", display_name="Kim")
        assert identity_user(webchat_channel, "U0KNOWN").pk == identity.user_id
        with CaptureQueriesContext(connection) as queries:
            assert identity_user(webchat_channel, "U0KNOWN").pk == identity.user_id
        assert len(queries) == 0
        assert identity_user(webchat_channel, "U0NOBODY") is None  # unknown senders are not kept
        identity_link(identity=ChannelIdentity.objects.get(pk=identity.pk), user=customer, actor=None)
        assert identity_user(webchat_channel, "U0KNOWN").pk == customer.pk


def test_reload_config_applies_changes_made_behind_djangos_back(customer, api_key_for):
    from django.core.management import call_command
    from django.utils import timezone
    from rest_framework.exceptions import AuthenticationFailed

    from apps.identities.authentication import api_key_user
    from apps.identities.models import ApiKey

    raw = api_key_for(customer)
    api_key_user(raw)
    ApiKey.objects.filter(prefix=raw.split("_")[1]).update(revoked_at=timezone.now())  # as SQL would: no signal
    api_key_user(raw)  # still kept here
    call_command("reload_config")
    with pytest.raises(AuthenticationFailed):
        api_key_user(raw)


def test_callers_arriving_together_ask_the_shared_cache_once(api_channel, settings, monkeypatch):
    """When the check interval is up, one caller asks for the shared generation; the others that
    arrive while it waits for the answer wait for it a little, then use what is kept (a gevent
    worker holds hundreds, and the shared cache may be slow)."""
    import threading
    import time

    settings.GATEWAY_CONFIG_CHECK_SECONDS = 3600
    assert channel_by_slug("api").pk == api_channel.pk
    backend, asked = type(caches["config"]), []  # each thread has its own cache object: patch the class
    real_get = backend.get

    def slow_get(self, key, *args, **kwargs):
        asked.append(key)
        time.sleep(0.3)
        return real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(backend, "get", slow_get)
    config_cache._checked_at = float("-inf")  # the interval is up
    found = []
    callers = [threading.Thread(target=lambda: found.append(channel_by_slug("api").pk)) for _ in range(20)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert found == [api_channel.pk] * 20
    assert asked.count(config_cache.GENERATION_KEY) == 1


def test_a_burst_arriving_with_the_check_reads_a_change_made_elsewhere(api_channel, settings, monkeypatch):
    """A quiet process, a change made elsewhere, then requests arriving together: the one that
    asks for the shared generation drops the old copies, and the others wait for its answer
    rather than read them (before, a burst of Slack events right after a channel's change got
    mixed answers)."""
    import threading

    settings.GATEWAY_CONFIG_CHECK_SECONDS = 3600
    assert channel_by_slug("api").enabled
    Channel.objects.filter(pk=api_channel.pk).update(enabled=False)  # no signal: "elsewhere"
    another_process_committed_a_change()
    backend = type(caches["config"])  # each thread has its own cache object: patch the class
    real_get, asking, answer = backend.get, threading.Event(), threading.Event()

    def held_get(self, key, *args, **kwargs):
        asking.set()
        answer.wait(10)
        return real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(backend, "get", held_get)
    monkeypatch.setattr(config_cache, "CHECK_WAIT_SECONDS", 10)
    config_cache._checked_at = float("-inf")  # the interval is up
    found = {}

    def look(name):
        try:
            found[name] = channel_by_slug("api").enabled
        finally:
            if connection.connection is not None:
                connection.connection.close()  # not back to the pool: gone with the thread
            connection.close()

    first = threading.Thread(target=look, args=("first",))
    first.start()
    assert asking.wait(10)
    second = threading.Thread(target=look, args=("second",))
    second.start()
    second.join(0.5)  # it waits for the first one's answer (before: it read the old copy at once)
    answer.set()
    first.join(10)
    second.join(10)
    assert found == {"first": False, "second": False}
