"""Rotating an API key: a new secret on the same row, the old one accepted for a grace period.

From the client's side (the new key works, the old one until its grace period ends, never after a
revocation), the staff's (the admin action, refused for an outranking owner or a revoked key) and
the operator's (``manage.py rotate_api_key``). The raw key is shown once and written nowhere.
"""
import io
import logging
import re
from datetime import timedelta

import pytest
from django.core.cache import cache, caches
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.identities.models import ApiKey, hash_api_key
from apps.identities.roles import Role
from apps.identities.services import KeyNotRotated, api_key_create, api_key_revoke, api_key_rotate
from apps.logs.models import AuditEvent
from apps.quotas.models import QuotaPolicy
from gateway_project import config_cache

pytestmark = pytest.mark.django_db

HOUR = 3600


def post(raw_key: str, ip: str = "192.0.2.60"):
    client = APIClient(REMOTE_ADDR=ip)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client.post("/api/v1/messages", {"message": "hi"}, format="json")


@pytest.fixture(autouse=True)
def _no_failures_counted_before(settings):
    """The addresses used here start with no failed authentications from an earlier run."""
    cache.delete_many([f"gateway:authfail:ip:192.0.2.{n}" for n in range(60, 64)])


@pytest.fixture
def issued(customer, api_channel):
    """A key of the customer's, scoped to nothing, and its raw secret."""
    return api_key_create(user=customer, actor=None, name="crm sync")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def rotate_in_admin(client, key, **form):
    return client.post(reverse("admin:identities_apikey_changelist"),
                       {"action": "rotate_keys", "_selected_action": [str(key.pk)], **form})


def end_grace_period(key):
    key.refresh_from_db()
    key.previous_valid_until = timezone.now() - timedelta(seconds=1)
    key.save(update_fields=["previous_valid_until"])  # a configuration change, as a rotation is


def everything_audited() -> str:
    return str(list(AuditEvent.objects.values("action", "before", "after", "detail")))


class TestRotation:
    def test_new_key_works_old_one_until_its_grace_period_ends(self, issued, customer):
        key, old_raw = issued
        old_prefix, expires_at = key.prefix, key.expires_at
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        key.refresh_from_db()
        assert new_raw.startswith(f"gw_{key.prefix}_") and key.prefix != old_prefix
        assert (key.name, key.user, key.expires_at, key.previous_prefix) == ("crm sync", customer, expires_at,
                                                                             old_prefix)
        assert key.previous_key_hash == hash_api_key(old_raw) and key.key_hash == hash_api_key(new_raw)
        assert ApiKey.objects.count() == 1
        assert post(new_raw).status_code == 202
        assert post(old_raw).status_code == 202  # still in its grace period
        end_grace_period(key)
        refused = post(old_raw)
        assert refused.status_code == 401 and "rotated" in refused.json()["error"]["message"]
        assert post(new_raw).status_code == 202

    def test_no_grace_period_refuses_the_old_secret_at_once_even_where_it_was_kept(self, issued):
        key, old_raw = issued
        assert post(old_raw).status_code == 202  # this process now keeps the key under its prefix
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=0)
        assert post(old_raw).status_code == 401
        assert post(new_raw).status_code == 202
        key.refresh_from_db()
        assert (key.previous_prefix, key.previous_key_hash, key.previous_valid_until) == (None, "", None)

    def test_rotation_tells_the_other_processes(self, issued, django_capture_on_commit_callbacks):
        key, _old_raw = issued
        before = caches["config"].get(config_cache.GENERATION_KEY)
        with django_capture_on_commit_callbacks(execute=True):
            api_key_rotate(key=key, actor=None, grace_seconds=0)
        assert caches["config"].get(config_cache.GENERATION_KEY) != before

    @pytest.mark.parametrize("stop", ["revoke", "expire"])
    def test_a_revoked_or_expired_key_refuses_both_secrets(self, issued, stop):
        key, old_raw = issued
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        assert post(old_raw).status_code == post(new_raw).status_code == 202
        key.refresh_from_db()
        if stop == "revoke":
            api_key_revoke(key=key, actor=None)
        else:
            key.expires_at = timezone.now() - timedelta(seconds=1)
            key.save(update_fields=["expires_at"])
        assert post(old_raw).status_code == post(new_raw).status_code == 401

    def test_rotating_again_keeps_only_the_latest_previous_secret(self, issued):
        key, first = issued
        second = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        third = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        key.refresh_from_db()
        assert f"gw_{key.previous_prefix}_" == second[:len(key.previous_prefix) + 4]
        assert post(first).status_code == 401
        assert post(second).status_code == post(third).status_code == 202

    def test_the_keys_quota_policy_counts_both_secrets_as_one_key(self, issued):
        key, old_raw = issued
        QuotaPolicy.objects.create(scope="api_key", api_key=key, request_rate="1/h")
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        assert post(old_raw).status_code == 202
        limited = post(new_raw)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"

    def test_the_keys_scopes_still_apply_to_the_new_secret(self, customer, api_channel, webchat_channel):
        _key, old_raw = api_key_create(user=customer, actor=None, channels=[webchat_channel])
        key = ApiKey.objects.get()
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        assert list(key.channels.all()) == [webchat_channel]
        assert post(old_raw).status_code == post(new_raw).status_code == 403  # not the API channel

    def test_a_revoked_key_or_a_grace_period_out_of_bounds_is_not_rotated(self, issued, settings):
        key, old_raw = issued
        for grace in (-1, settings.GATEWAY_API_KEY_ROTATION_MAX_GRACE_SECONDS + 1):
            with pytest.raises(KeyNotRotated):
                api_key_rotate(key=key, actor=None, grace_seconds=grace)
        api_key_revoke(key=key, actor=None)
        with pytest.raises(KeyNotRotated):
            api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        key.refresh_from_db()
        assert key.key_hash == hash_api_key(old_raw) and key.previous_prefix is None
        assert not AuditEvent.objects.filter(action="apikey.rotated").exists()

    def test_audited_without_any_secret_and_logged_nowhere(self, issued, admin_user, caplog):
        key, old_raw = issued
        old_prefix = key.prefix
        with caplog.at_level(logging.DEBUG):
            new_raw = api_key_rotate(key=key, actor=admin_user, grace_seconds=HOUR, client_ip="192.0.2.7")
            post(new_raw), post(old_raw), post(new_raw + "x")
        event = AuditEvent.objects.get(action="apikey.rotated")
        assert (event.actor, event.target_id, event.client_ip) == (admin_user, str(key.pk), "192.0.2.7")
        assert event.before["prefix"] == old_prefix and event.after["prefix"] == new_raw.split("_")[1]
        assert event.after["previous_prefix"] == old_prefix and event.detail["grace_seconds"] == HOUR
        audited = everything_audited()
        for secret in (old_raw, new_raw, old_raw.split("_", 2)[2], new_raw.split("_", 2)[2],
                       hash_api_key(old_raw), hash_api_key(new_raw)):
            assert secret not in audited and secret not in caplog.text


class TestLockout:
    def test_failures_with_the_old_prefix_lock_that_prefix_only(self, settings, issued):
        settings.GATEWAY_AUTH_FAILURES_PER_KEY = 2
        key, old_raw = issued
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        assert post(old_raw, ip="192.0.2.61").status_code == 202  # it has worked from there
        old_prefix = old_raw.split("_")[1]
        assert [post(f"gw_{old_prefix}_guess{i}", ip="192.0.2.62").status_code for i in range(2)] == [401, 401]
        assert set(AuditEvent.objects.filter(action="apikey.auth_failed").values_list(
            "detail__key_prefix", flat=True)) == {old_prefix}
        assert post(old_raw, ip="192.0.2.63").status_code == 429  # the old prefix is locked
        assert post(old_raw, ip="192.0.2.61").status_code == 202  # except where it worked before
        assert post(new_raw, ip="192.0.2.63").status_code == 202  # the new prefix was not guessed


class TestAdminAction:
    def test_asks_for_the_grace_period_then_shows_the_key_once(self, admin_client, admin_user, issued):
        key, old_raw = issued
        old_prefix = key.prefix
        asked = rotate_in_admin(admin_client, key)
        assert asked.status_code == 200 and 'name="grace_hours"' in asked.content.decode()
        assert ApiKey.objects.get().prefix == old_prefix  # nothing happens before the form is sent
        shown = rotate_in_admin(admin_client, key, apply="Rotate", grace_hours="2")
        assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
        new_raw = re.search(r'id="raw-api-key"[^>]*>(gw_[^<]+)<', shown.content.decode()).group(1)
        key.refresh_from_db()
        assert new_raw.startswith(f"gw_{key.prefix}_") and key.previous_prefix == old_prefix
        assert timedelta(hours=1.9) < key.previous_valid_until - timezone.now() <= timedelta(hours=2)
        assert not shown.cookies.get("messages")
        event = AuditEvent.objects.get(action="apikey.rotated")
        assert event.actor == admin_user and event.detail["grace_seconds"] == 2 * HOUR
        assert new_raw not in everything_audited()
        assert post(new_raw).status_code == post(old_raw).status_code == 202
        page = admin_client.get(reverse("admin:identities_apikey_change", args=[key.pk])).content.decode()
        assert f"gw_{old_prefix}_… still accepted until" in page
        assert new_raw not in page and key.key_hash not in page and key.previous_key_hash not in page
        end_grace_period(key)
        page = admin_client.get(reverse("admin:identities_apikey_change", args=[key.pk])).content.decode()
        assert f"gw_{old_prefix}_… no longer accepted" in page

    def test_refused_for_a_key_whose_owner_outranks_the_actor(self, admin_client, admin_user, make_user):
        boss = make_user(Role.ADMIN, is_superuser=True)
        key, raw = ApiKey.generate(user=boss)
        response = rotate_in_admin(admin_client, key, apply="Rotate", grace_hours="0")
        assert response.status_code == 302
        assert ApiKey.objects.get(pk=key.pk).key_hash == hash_api_key(raw)
        refusal = AuditEvent.objects.get(action="admin.refused")
        assert (refusal.actor, refusal.target_id, refusal.detail["what"]) == (admin_user, str(key.pk),
                                                                              "rotate this key")
        assert not AuditEvent.objects.filter(action="apikey.rotated").exists()

    def test_refused_for_a_revoked_key(self, admin_client, issued):
        key, raw = issued
        api_key_revoke(key=key, actor=None)
        response = rotate_in_admin(admin_client, key, apply="Rotate", grace_hours="1")
        assert response.status_code == 302
        assert ApiKey.objects.get(pk=key.pk).key_hash == hash_api_key(raw)
        assert not AuditEvent.objects.filter(action="apikey.rotated").exists()

    def test_refused_to_staff_who_may_only_view_keys(self, client, make_user, issued):
        from django.contrib.auth.models import Permission

        viewer = make_user(Role.EMPLOYEE, is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
        client.force_login(viewer)
        key, raw = issued
        rotate_in_admin(client, key, apply="Rotate", grace_hours="1")
        assert ApiKey.objects.get(pk=key.pk).key_hash == hash_api_key(raw)


class TestCommand:
    def rotate(self, *args):
        out, err = io.StringIO(), io.StringIO()
        call_command("rotate_api_key", *args, stdout=out, stderr=err)
        return out.getvalue().strip(), err.getvalue()

    def test_prints_the_new_key_once_and_the_old_one_keeps_its_default_grace(self, issued, settings):
        key, old_raw = issued
        new_raw, told = self.rotate(key.prefix)
        key.refresh_from_db()
        assert new_raw.startswith(f"gw_{key.prefix}_") and new_raw not in told and "until" in told
        expected_end = timezone.now() + timedelta(seconds=settings.GATEWAY_API_KEY_ROTATION_GRACE_SECONDS)
        assert abs(key.previous_valid_until - expected_end) < timedelta(minutes=1)
        assert post(new_raw).status_code == post(old_raw).status_code == 202
        assert AuditEvent.objects.get(action="apikey.rotated").actor is None

    def test_grace_hours_zero_stops_the_old_secret(self, issued):
        key, old_raw = issued
        new_raw, _told = self.rotate(f"gw_{key.prefix}_…", "--grace-hours", "0")
        assert post(old_raw).status_code == 401 and post(new_raw).status_code == 202

    def test_refuses_an_unknown_replaced_or_revoked_prefix(self, issued):
        key, _old_raw = issued
        with pytest.raises(CommandError, match="No API key"):
            self.rotate("00000000")
        old_prefix = key.prefix
        self.rotate(old_prefix)
        with pytest.raises(CommandError, match="rotated since"):
            self.rotate(old_prefix)
        key.refresh_from_db()
        api_key_revoke(key=key, actor=None)
        with pytest.raises(CommandError, match="revoked"):
            self.rotate(key.prefix)
        with pytest.raises(CommandError, match="between 0 and"):
            key2, _ = api_key_create(user=key.user, actor=None)
            self.rotate(key2.prefix, "--grace-hours", "100000")


class TestEndingTheGraceEarly:
    """Staff see whether clients still use the old secret, and stop accepting it before its grace
    period ends: once they have moved over, or at once when it leaked."""

    def end_in_admin(self, client, *keys):
        return client.post(reverse("admin:identities_apikey_changelist"),
                           {"action": "end_grace", "_selected_action": [str(key.pk) for key in keys]})

    def test_the_old_secrets_last_use_is_kept_apart_from_the_new_ones(self, admin_client, issued):
        key, old_raw = issued
        assert post(old_raw).status_code == 202  # its use as the current secret, just before the rotation
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        page = admin_client.get(reverse("admin:identities_apikey_change", args=[key.pk])).content.decode()
        assert "still accepted until" in page and "not used since the rotation" in page
        assert post(new_raw).status_code == 202
        key.refresh_from_db()
        assert key.previous_last_used_at is None and key.last_used_at is not None
        assert post(old_raw).status_code == 202
        key.refresh_from_db()
        assert key.previous_last_used_at is not None
        page = admin_client.get(reverse("admin:identities_apikey_change", args=[key.pk])).content.decode()
        assert f"last used {key.previous_last_used_at:%Y-%m-%d %H:%M} UTC" in page
        api_key_rotate(key=key, actor=None, grace_seconds=HOUR)  # a newer old secret, not used yet
        key.refresh_from_db()
        assert key.previous_last_used_at is None

    def test_admin_action_stops_the_old_secret_now_and_audits_it(self, admin_client, admin_user, issued):
        key, old_raw = issued
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        assert post(old_raw).status_code == 202  # this process keeps the key, and the old secret is used
        response = self.end_in_admin(admin_client, key)
        assert response.status_code == 302
        refused = post(old_raw)
        assert refused.status_code == 401 and "rotated" in refused.json()["error"]["message"]
        assert post(new_raw).status_code == 202
        event = AuditEvent.objects.get(action="apikey.grace_ended")
        assert event.actor == admin_user and event.target_id == str(key.pk)
        assert event.detail["previous_last_used_at"] is not None
        assert old_raw not in everything_audited() and new_raw not in everything_audited()
        page = admin_client.get(reverse("admin:identities_apikey_change", args=[key.pk])).content.decode()
        assert "no longer accepted" in page
        self.end_in_admin(admin_client, key)  # nothing left to end: nothing audited again
        assert AuditEvent.objects.filter(action="apikey.grace_ended").count() == 1

    def test_refused_for_an_outranking_owner_and_to_staff_who_may_only_view(self, admin_client, admin_user,
                                                                          client, make_user):
        boss = make_user(Role.ADMIN, is_superuser=True)
        key, _raw = ApiKey.generate(user=boss)
        api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        self.end_in_admin(admin_client, key)
        assert ApiKey.objects.get(pk=key.pk).previous_secret_accepted
        refusal = AuditEvent.objects.get(action="admin.refused")
        assert (refusal.actor, refusal.detail["what"]) == (admin_user, "end the grace period of this key")
        from django.contrib.auth.models import Permission

        viewer = make_user(Role.EMPLOYEE, is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
        client.force_login(viewer)
        self.end_in_admin(client, key)
        assert ApiKey.objects.get(pk=key.pk).previous_secret_accepted
        assert not AuditEvent.objects.filter(action="apikey.grace_ended").exists()

    def test_command_stops_the_old_secret_and_says_when_it_was_last_used(self, issued):
        key, old_raw = issued
        with pytest.raises(CommandError, match="no old secret"):
            call_command("end_api_key_grace", key.prefix, stdout=io.StringIO())
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        out = io.StringIO()
        call_command("end_api_key_grace", f"gw_{key.prefix}_…", stdout=out)
        assert "not used since the rotation" in out.getvalue() and new_raw not in out.getvalue()
        assert post(old_raw).status_code == 401 and post(new_raw).status_code == 202
        assert AuditEvent.objects.get(action="apikey.grace_ended").actor is None
        for unknown in ("00000000", "", "%"):
            with pytest.raises(CommandError, match="No API key"):
                call_command("end_api_key_grace", unknown, stdout=io.StringIO())


def test_a_prefix_reused_as_a_current_one_names_that_key(customer, issued):
    """seed_demo derives its keys' prefixes: a demo key created again after the old one was rotated
    holds as its current prefix what the rotated key holds as its previous one."""
    key, old_raw = issued
    api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
    reused = old_raw + "2"  # the same prefix, another secret
    ApiKey.objects.create(user=customer, name="demo", prefix=old_raw.split("_")[1], key_hash=hash_api_key(reused))
    assert post(reused).status_code == 202
    assert post(old_raw).status_code == 401  # checked against the key holding the prefix now


class TestAttacks:
    """Attacks from outside on a rotated key (h-attack4)."""

    def test_seed_demo_does_not_bring_back_a_rotated_demo_keys_secret(self, agent):
        """scripts/run.sh runs seed_demo at every start. A demo key staff rotated (its derived secret
        leaked: seed_demo --json prints it) must stay rotated, as a revoked one stays revoked."""
        from apps.conversations.management.commands.seed_demo import demo_api_key

        call_command("seed_demo", stdout=io.StringIO(), stderr=io.StringIO())
        prefix, demo_raw = demo_api_key("customer")
        key = ApiKey.objects.get(prefix=prefix)
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=0)
        assert post(demo_raw).status_code == 401 and post(new_raw).status_code == 202
        call_command("seed_demo", stdout=io.StringIO(), stderr=io.StringIO())  # the next start
        assert post(demo_raw).status_code == 401  # the leaked secret is not back
        assert post(new_raw).status_code == 202  # and the clients moved to the new one still work

    def test_the_old_secret_does_not_tell_its_holder_the_new_prefix(self, issued):
        """Whoever holds the replaced (leaked) secret during the grace period must not learn the new
        prefix: with it, a few wrong guesses lock the new key (per-prefix lockout) for its clients."""
        key, old_raw = issued
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        client = APIClient(REMOTE_ADDR="192.0.2.60")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {old_raw}")
        response = client.get("/api/v1/usage")
        assert response.status_code == 200
        assert new_raw.split("_")[1] not in response.content.decode()

    @pytest.mark.parametrize("grace", ["nan", "inf", "-inf", "1e9"])
    def test_command_refuses_a_grace_that_is_not_a_number_of_hours(self, issued, grace):
        key, old_raw = issued
        with pytest.raises(CommandError):
            call_command("rotate_api_key", key.prefix, "--grace-hours", grace,
                         stdout=io.StringIO(), stderr=io.StringIO())
        key.refresh_from_db()
        assert key.key_hash == hash_api_key(old_raw)

    @pytest.mark.parametrize("grace", ["nan", "inf", "-1", "1e9", "", "720.01", "0x10"])
    def test_admin_form_refuses_crafted_grace(self, admin_client, issued, grace):
        key, old_raw = issued
        response = rotate_in_admin(admin_client, key, apply="Rotate", grace_hours=grace)
        assert response.status_code == 200 and "raw-api-key" not in response.content.decode()
        key.refresh_from_db()
        assert key.key_hash == hash_api_key(old_raw)

    @pytest.mark.parametrize("prefix", ["", "%", "_", "%%%%%%%%", pytest.param("a" * 5000, id="long"), "é", "a\tb",
                                        "' OR 1=1 --"])
    def test_crafted_prefixes_are_refused(self, issued, prefix):
        key, old_raw = issued
        api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        assert post(f"gw_{prefix}_{old_raw.split('_', 2)[2]}").status_code == 401

    def test_nul_in_the_prefix_is_refused_not_a_500(self, issued):
        key, old_raw = issued
        assert post(f"gw_ab\x00cd_{old_raw.split('_', 2)[2]}").status_code == 401

    @pytest.mark.parametrize("stop", ["block", "deactivate"])
    def test_old_secret_refused_once_the_owner_is_stopped(self, issued, customer, stop):
        from apps.identities.services import user_block

        key, old_raw = issued
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        if stop == "block":
            user_block(user=customer, actor=None, reason="test")
        else:
            customer.is_active = False
            customer.save(update_fields=["is_active"])
        assert post(old_raw).status_code in (401, 403) and post(new_raw).status_code in (401, 403)

    def test_one_keys_old_secret_never_authenticates_as_another(self, issued, make_user):
        key, old_raw = issued
        other_user = make_user(Role.CUSTOMER)
        other, other_raw = api_key_create(user=other_user, actor=None)
        api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        # the other key's prefix with this key's old secret, and the reverse
        assert post(f"gw_{other.prefix}_{old_raw.split('_', 2)[2]}").status_code == 401
        assert post(f"gw_{old_raw.split('_')[1]}_{other_raw.split('_', 2)[2]}").status_code == 401

    def test_success_with_the_old_prefix_does_not_unlock_the_new(self, settings, issued):
        settings.GATEWAY_AUTH_FAILURES_PER_KEY = 2
        key, old_raw = issued
        new_raw = api_key_rotate(key=key, actor=None, grace_seconds=HOUR)
        new_prefix = new_raw.split("_")[1]
        for i in range(2):
            post(f"gw_{new_prefix}_guess{i}", ip="192.0.2.62")
        assert post(old_raw, ip="192.0.2.63").status_code == 202
        assert post(f"gw_{new_prefix}_guess9", ip="192.0.2.63").status_code == 429

    def test_the_rotated_page_is_not_cached_and_rotation_needs_post(self, admin_client, issued):
        key, _ = issued
        admin_client.get(reverse("admin:identities_apikey_changelist"),
                         {"action": "rotate_keys", "_selected_action": [str(key.pk)],
                          "apply": "Rotate", "grace_hours": "1"})
        key.refresh_from_db()
        assert key.previous_prefix is None
        shown = rotate_in_admin(admin_client, key, apply="Rotate", grace_hours="1")
        assert "no-store" in shown["Cache-Control"]
