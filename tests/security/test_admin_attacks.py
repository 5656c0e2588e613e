"""Attacks on the staff side of the running gateway: the admin pages (a real login, real CSRF), the
dashboard, provider settings, /metrics, the API-key lockout and admin-written route patterns.

Each attempt goes over HTTP to the stack's Daphne; what it changed is read back from the database.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from devtools.stack import http

from .admin_client import AdminClient
from .conftest import audited, last_audit_id, sql

pytestmark = [pytest.mark.services, pytest.mark.e2e]

MALLORY_PASSWORD = "mallory-Pa55word-!"
ROOT_PASSWORD = "root-Pa55word-never-guessed-!"
SCRIPT = "</script><script>alert(1)</script>"

# Users for the admin attacks: a superuser (the victim), an admin-role staff member (the attacker), a
# customer she controls (her puppet), a group holding more than she does, and channel identities.
SETUP_USERS = """
import json
from django.contrib.auth.models import Group, Permission
from apps.connectors.models import Channel
from apps.identities.models import ChannelIdentity, User
from apps.identities.roles import Role, ensure_role_groups
groups = ensure_role_groups()
root, _ = User.objects.get_or_create(username="sec-root", defaults={"email": "root@example.org"})
root.is_staff = root.is_superuser = True
root.set_password(%(root)r)
root.save()
mallory, _ = User.objects.get_or_create(username="mallory", defaults={"email": "mallory@example.org"})
mallory.is_staff, mallory.is_superuser = True, False
mallory.set_password(%(mallory)r)
mallory.save()
mallory.groups.set([groups[Role.ADMIN]])
puppet, _ = User.objects.get_or_create(username="puppet")
puppet.groups.set([groups[Role.CUSTOMER]])
powerful, _ = Group.objects.get_or_create(name="powerful")
powerful.permissions.add(Permission.objects.get(codename="change_provider"),
                         Permission.objects.get(codename="change_group"))
channel = Channel.objects.get(slug=%(channel)r)
mine, _ = ChannelIdentity.objects.get_or_create(channel=channel, external_id="mallory-on-web",
                                                defaults={"user": mallory})
roots, _ = ChannelIdentity.objects.get_or_create(channel=channel, external_id="root-on-web",
                                                 defaults={"user": root})
print(json.dumps({"root": str(root.pk), "mallory": str(mallory.pk), "puppet": str(puppet.pk),
                  "powerful": powerful.pk, "mine": mine.pk, "roots": roots.pk,
                  "change_provider": Permission.objects.get(codename="change_provider").pk}))
"""


@pytest.fixture(scope="module")
def people(sec):
    out = sec.stack.manage("shell", "-c", SETUP_USERS % {
        "root": ROOT_PASSWORD, "mallory": MALLORY_PASSWORD, "channel": sec.demo["channels"]["webchat"]["slug"]})
    return json.loads(out.strip().splitlines()[-1])


def user_row(sec, pk) -> dict:
    columns = ["password", "email", "is_active", "is_superuser", "is_staff", "merged_into_id", "blocked_at"]
    row = sql(sec, f"SELECT {', '.join(columns)} FROM identities_user WHERE id = %s", pk)[0]
    groups = {g for (g,) in sql(sec, "SELECT g.name FROM identities_user_groups ug JOIN auth_group g "
                                     "ON g.id = ug.group_id WHERE ug.user_id = %s", pk)}
    perms = {p for (p,) in sql(sec, "SELECT permission_id FROM identities_user_user_permissions "
                                    "WHERE user_id = %s", pk)}
    return {**dict(zip(columns, row, strict=True)), "groups": groups, "perms": perms}


def refusals_since(sec, since: int) -> int:
    return audited(sec, "admin.refused", since)


def test_admin_role_staff_cannot_take_over_a_superuser(sec, people, attack):
    """Must hold: an admin-role staff member (no superuser) cannot set a superuser's password, change
    its e-mail or deactivate it, merge it away, block it, change its role, mint an API key in its
    name, or move a channel identity to or from it. Each refused POST is an admin.refused audit row."""
    root, mallory = people["root"], people["mallory"]
    admin = AdminClient(sec.url).login("mallory", MALLORY_PASSWORD)
    original = user_row(sec, root)

    def tried(changed: bool, since: int) -> None:
        attack.tried(admitted=changed, audited=refusals_since(sec, since) > 0)

    # 1. the password-change view
    since = last_audit_id(sec)
    _status, form = admin.form(f"/admin/identities/user/{root}/password/")
    form.set("password1", "Taken-over-123456!").set("password2", "Taken-over-123456!").set("usable_password", "true")
    admin.post(f"/admin/identities/user/{root}/password/", form)
    tried(user_row(sec, root)["password"] != original["password"], since)

    # 2. the change form: deactivate; 3. the change form: a new e-mail (password reset goes there)
    page = f"/admin/identities/user/{root}/change/"
    for change in (lambda f: f.drop("is_active"), lambda f: f.set("email", "mallory+root@example.org")):
        since = last_audit_id(sec)
        _status, form = admin.form(page, "user_form")
        if not form.get("username"):  # a read-only page has no inputs: post what the editable form had
            form.set("username", "sec-root").set("email", "root@example.org").set("is_active", "on")
            form.set("is_staff", "on").set("_save", "Save")
        change(form)
        admin.post(page, form)
        now = user_row(sec, root)
        tried(now["is_active"] != original["is_active"] or now["email"] != original["email"], since)

    # 4. merge the superuser into the puppet; 5. block it; 6. demote it to customer
    for action, extra in (("merge_users", [("apply", "Merge"), ("survivor", people["puppet"])]),
                          ("block_users", []), ("make_customer", [])):
        since = last_audit_id(sec)
        admin.post("/admin/identities/user/", [("action", action), ("_selected_action", root),
                                               ("_selected_action", people["puppet"]), ("index", "0"), *extra])
        now = user_row(sec, root)
        tried(now["merged_into_id"] is not None or now["blocked_at"] is not None or not now["is_active"]
              or now["groups"] != original["groups"], since)

    # 7. an API key in the superuser's name (whoever holds it speaks as the superuser)
    since = last_audit_id(sec)
    keys_before = sql(sec, "SELECT count(*) FROM identities_apikey WHERE user_id = %s", root)[0][0]
    _status, form = admin.form("/admin/identities/apikey/add/", "apikey_form")
    admin.post("/admin/identities/apikey/add/", form.set("user", root).set("name", "mine now").set("_save", "Save"))
    tried(sql(sec, "SELECT count(*) FROM identities_apikey WHERE user_id = %s", root)[0][0] > keys_before, since)

    # 8. move her own identity onto the superuser (she then speaks as it on that channel);
    # 9. move the superuser's identity onto herself
    for identity, new_owner in ((people["mine"], root), (people["roots"], mallory)):
        since = last_audit_id(sec)
        before = sql(sec, "SELECT user_id FROM identities_channelidentity WHERE id = %s", identity)[0][0]
        _status, form = admin.form(f"/admin/identities/channelidentity/{identity}/change/", "channelidentity_form")
        admin.post(f"/admin/identities/channelidentity/{identity}/change/",
                   form.set("user", new_owner).set("_save", "Save"))
        after = sql(sec, "SELECT user_id FROM identities_channelidentity WHERE id = %s", identity)[0][0]
        tried(after != before, since)

    now = user_row(sec, root)
    assert now["password"] == original["password"] and now["email"] == original["email"]
    assert now["is_active"] and now["merged_into_id"] is None and now["blocked_at"] is None
    assert now["groups"] == original["groups"]
    assert attack.admitted == 0, attack
    # The superuser itself still logs in with its own password.
    AdminClient(sec.url).login("sec-root", ROOT_PASSWORD)


def test_admin_role_staff_cannot_grant_what_it_does_not_hold(sec, people, attack):
    """Must hold: an admin-role staff member cannot give herself or her puppet a permission, a group
    or a flag (is_superuser) she does not hold, by the user form, a role action or the group form."""
    mallory, puppet = people["mallory"], people["puppet"]
    admin = AdminClient(sec.url).login("mallory", MALLORY_PASSWORD)
    change_provider, powerful = str(people["change_provider"]), str(people["powerful"])

    attempts = [
        (mallory, lambda f: f.set("user_permissions", *f.get("user_permissions"), change_provider),
         lambda row: int(change_provider) in row["perms"]),
        (puppet, lambda f: f.set("user_permissions", *f.get("user_permissions"), change_provider),
         lambda row: int(change_provider) in row["perms"]),
        (puppet, lambda f: f.set("groups", *f.get("groups"), powerful), lambda row: "powerful" in row["groups"]),
        (mallory, lambda f: f.set("groups", *f.get("groups"), powerful), lambda row: "powerful" in row["groups"]),
        (puppet, lambda f: f.set("is_superuser", "on"), lambda row: row["is_superuser"]),
        (mallory, lambda f: f.set("is_superuser", "on"), lambda row: row["is_superuser"]),
    ]
    for target, change, gained in attempts:
        since = last_audit_id(sec)
        page = f"/admin/identities/user/{target}/change/"
        status, form = admin.form(page, "user_form")
        assert status == 200 and form.get("username"), status  # her own row and her puppet's are editable
        admin.post(page, change(form.set("_save", "Save")))
        attack.tried(admitted=gained(user_row(sec, target)), audited=refusals_since(sec, since) > 0)

    # The group form: add a permission she lacks to her own role group.
    since = last_audit_id(sec)
    admin_group = sql(sec, "SELECT id FROM auth_group WHERE name = 'admin'")[0][0]
    _status, form = admin.form(f"/admin/auth/group/{admin_group}/change/", "group_form")
    admin.post(f"/admin/auth/group/{admin_group}/change/",
               form.set("name", "admin").set("permissions", *form.get("permissions"), change_provider)
               .set("_save", "Save"))
    held = sql(sec, "SELECT count(*) FROM auth_group_permissions WHERE group_id = %s AND permission_id = %s",
               admin_group, int(change_provider))[0][0]
    attack.tried(admitted=held > 0, audited=refusals_since(sec, since) > 0)

    # Object permissions (django-guardian): delete_agent on one agent, which she does not hold, to her puppet.
    agent = sql(sec, "SELECT id FROM agents_agent ORDER BY id LIMIT 1")[0][0]
    page = f"/admin/agents/agent/{agent}/permissions/user-manage/{puppet}/"

    def object_perm(codename: str) -> bool:
        return sql(sec, "SELECT count(*) FROM guardian_userobjectpermission o JOIN auth_permission p "
                        "ON p.id = o.permission_id WHERE o.user_id::text = %s AND o.object_pk = %s AND p.codename = %s",
                   puppet, str(agent), codename)[0][0] > 0

    since = last_audit_id(sec)
    status, form = admin.form(page)
    assert status == 200, status
    admin.post(page, form.set("permissions", *form.get("permissions"), "delete_agent"))
    attack.tried(admitted=object_perm("delete_agent"), audited=refusals_since(sec, since) > 0)
    assert attack.admitted == 0, attack
    # What she holds (she may use every agent) she may hand out.
    assert admin.post(page, form.set("permissions", "use_agent"))[0] == 302 and object_perm("use_agent")

    # What she does hold she may still hand out: her puppet becomes an employee.
    admin.post("/admin/identities/user/", [("action", "make_employee"), ("_selected_action", puppet),
                                           ("index", "0")])
    assert user_row(sec, puppet)["groups"] == {"employee"}


# --- the dashboard ---------------------------------------------------------------------------

SETUP_SCRIPT_MODEL = """
from decimal import Decimal
from django.utils import timezone
from apps.logs.models import LLMCall
from apps.logs.rollups import rollup_day
for _ in range(2):
    LLMCall.objects.create(model=%(model)r, provider="evil</script>", status="ok", prompt_tokens=5,
                           completion_tokens=5, total_tokens=10, cost=Decimal("0.25"), latency_ms=20)
rollup_day(timezone.localdate())
"""


def test_a_model_name_with_a_script_tag_renders_as_text_on_the_dashboard(sec, attack):
    """Must hold: chart data on the dashboard is JSON in a json_script element: a model name of
    ``</script><script>alert(1)</script>`` (as a provider may return one) never appears unescaped."""
    sec.stack.manage("shell", "-c", SETUP_SCRIPT_MODEL % {"model": SCRIPT})
    staff = AdminClient(sec.url).login(sec.demo["staff"]["username"], sec.demo["staff"]["password"])
    for page in ("/dashboard/", "/dashboard/cost/", "/dashboard/errors/"):
        status, text, _headers = staff.get(page)
        assert status == 200, (page, status)
        attack.tried(admitted=SCRIPT in text or "<script>alert(1)" in text)
        if page == "/dashboard/cost/":  # the row is on the page, as inert text
            assert "\\u003C/script\\u003E\\u003Cscript\\u003Ealert(1)" in text, text[-3000:]
    assert attack.admitted == 0, attack


# --- provider settings -----------------------------------------------------------------------


class _Exfil(BaseHTTPRequestHandler):
    """A provider endpoint run by the attacker: keeps every Authorization header it is sent."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        _Exfil.seen.append(self.headers.get("Authorization", ""))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "thanks"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def exfil_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exfil)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Exfil.seen = []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


PLANT_PROVIDER = """
from apps.agents.models import Agent, LLMModel, Provider
provider, _ = Provider.objects.update_or_create(slug="planted", defaults={
    "name": "planted", "base_url": %(url)r, "api_key_env": "DATABASE_URL", "timeout_seconds": 5})
model, _ = LLMModel.objects.get_or_create(name="planted-model", provider=provider)
Agent.objects.update_or_create(slug="planted-agent", defaults={
    "name": "planted", "model": model, "visibility": "public", "system_prompt": "hi"})
"""


def provider_form(admin: AdminClient, path: str):
    status, form = admin.form(path, "provider_form")
    assert status == 200, (path, status)
    return form


def test_provider_key_variable_cannot_name_another_secret(sec, attack, exfil_server):
    """Must hold: a provider's key variable must match GATEWAY_PROVIDER_KEY_ENV_ALLOWED (``*_API_KEY``):
    naming DATABASE_URL or SECRET_KEY is refused in the admin, and a row that names one anyway (saved
    before the rule) sends no such value to its endpoint. Every provider change is audited, before
    and after, with no key in clear."""
    staff = AdminClient(sec.url).login(sec.demo["staff"]["username"], sec.demo["staff"]["password"])
    for n, variable in enumerate(("DATABASE_URL", "SECRET_KEY", "REDIS_URL")):
        form = provider_form(staff, "/admin/agents/provider/add/")
        staff.post("/admin/agents/provider/add/", form.set("slug", f"exfil-{n}").set("name", "exfil")
                   .set("preset", "custom").set("base_url", exfil_server).set("api_key_env", variable)
                   .set("timeout_seconds", "5").set("enabled", "on").set("_save", "Save"))
        created = sql(sec, "SELECT count(*) FROM agents_provider WHERE slug = %s", f"exfil-{n}")[0][0]
        attack.tried(admitted=created > 0)
    demo_provider = sql(sec, "SELECT id, api_key_env FROM agents_provider ORDER BY id LIMIT 1")[0]
    form = provider_form(staff, f"/admin/agents/provider/{demo_provider[0]}/change/")
    staff.post(f"/admin/agents/provider/{demo_provider[0]}/change/",
               form.set("api_key_env", "DJANGO_SUPERUSER_PASSWORD").set("_save", "Save"))
    now = sql(sec, "SELECT api_key_env FROM agents_provider WHERE id = %s", demo_provider[0])[0][0]
    attack.tried(admitted=now != demo_provider[1])

    # A row that names DATABASE_URL anyway (written before the rule, or straight into the database).
    sec.stack.manage("shell", "-c", PLANT_PROVIDER % {"url": exfil_server})
    customer = {"Authorization": f"Bearer {sec.demo['api_keys']['customer']}"}
    http("POST", f"{sec.url}/v1/chat/completions",
         {"model": "planted-agent", "messages": [{"role": "user", "content": "hello"}]}, customer, timeout=60)
    # Refused before any request: the endpoint hears nothing (and so never sees DATABASE_URL).
    leaked = bool(_Exfil.seen)
    attack.tried(admitted=leaked)
    assert not leaked, _Exfil.seen
    assert attack.admitted == 0, attack


def test_every_provider_change_is_audited_without_the_key(sec, exfil_server):
    """Must hold: create, change and delete of a provider each write an audit row with before/after;
    the API key typed into the form is in none of them (nor on the admin page afterwards)."""
    staff = AdminClient(sec.url).login(sec.demo["staff"]["username"], sec.demo["staff"]["password"])
    secret = f"sk-live-{uuid.uuid4().hex}"
    since = last_audit_id(sec)
    form = provider_form(staff, "/admin/agents/provider/add/")
    status, _text, _ = staff.post("/admin/agents/provider/add/", form.set("slug", "audited").set("name", "audited")
                                  .set("preset", "custom").set("base_url", exfil_server)
                                  .set("api_key_env", "AUDITED_API_KEY").set("new_api_key", secret)
                                  .set("timeout_seconds", "5").set("enabled", "on").set("_save", "Save"))
    assert status == 302
    pk = sql(sec, "SELECT id FROM agents_provider WHERE slug = 'audited'")[0][0]
    page = f"/admin/agents/provider/{pk}/change/"
    form = provider_form(staff, page)
    assert secret not in staff.get(page)[1]
    status, _text, _ = staff.post(page, form.set("base_url", "https://elsewhere.example/v1")
                                  .set("new_api_key", secret + "2").set("_save", "Save"))
    assert status == 302
    _status, form = staff.form(f"/admin/agents/provider/{pk}/delete/")
    status, _text, _ = staff.post(f"/admin/agents/provider/{pk}/delete/", form.set("post", "yes"))
    assert status == 302
    rows = sql(sec, "SELECT action, before::text, after::text, detail::text FROM logs_auditevent "
                    "WHERE id > %s AND action LIKE 'provider.%%' ORDER BY id", since)
    assert [r[0] for r in rows] == ["provider.created", "provider.changed", "provider.deleted"], rows
    created, changed, deleted = rows
    assert exfil_server in created[2] and "elsewhere.example" in changed[2] and exfil_server in changed[1]
    assert deleted[1] and "elsewhere.example" in deleted[1]
    assert all(secret not in (cell or "") for row in rows for cell in row), rows
    assert '"api_key": "changed"' in changed[3] or "api_key" in changed[2]


# --- /metrics ---------------------------------------------------------------------------------


def test_metrics_are_closed_without_a_token_outside_debug(sec, attack):
    """Must hold: with DEBUG off and no GATEWAY_METRICS_TOKEN, /metrics answers no one; with a token
    set, the scrape works with it (Prometheus' bearer_token) and is refused without or with another."""
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        status, body, _ = http("GET", f"{sec.url}/metrics", headers=headers)
        attack.tried(admitted=status == 200)
        assert status in (401, 403) and body["error"]["code"], (status, body)
    token = uuid.uuid4().hex
    with_token = sec.stack.daphne(env={"GATEWAY_METRICS_TOKEN": token})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {token}x"}):
        status, _body, _ = http("GET", f"{with_token}/metrics", headers=headers)
        attack.tried(admitted=status == 200)
    status, body, headers = http("GET", f"{with_token}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and "gateway_requests_total" in body and headers["Content-Type"].startswith("text/plain")
    assert attack.admitted == 0, attack


# --- the API-key lockout ------------------------------------------------------------------------


def _clear_auth_failures(sec) -> None:
    """Forget the failure counts (not the marks of keys that have worked: those are the point)."""
    client = redis.Redis(port=sec.redis.port)
    for pattern in ("*gateway:authfail:ip:*", "*gateway:authfail:key:*", "*gateway:authfail:127.0.0.1"):
        for key in client.scan_iter(pattern):
            client.delete(key)


def test_one_guesser_behind_a_shared_address_does_not_lock_out_the_others(sec, attack):
    """Must hold: behind a proxy that is not in GATEWAY_TRUSTED_PROXIES every client shares one
    address. A guesser there locks out the guessing (429), not a client whose key has already worked
    from that address; and a key prefix hammered from many addresses is locked for failures on it."""
    _clear_auth_failures(sec)
    customer = {"Authorization": f"Bearer {sec.demo['api_keys']['customer']}"}
    try:
        assert http("POST", f"{sec.url}/api/v1/messages", {"message": "before"}, customer)[0] == 202
        guesses = [http("POST", f"{sec.url}/api/v1/messages", {"message": "x"},
                        {"Authorization": f"Bearer gw_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}"})[0]
                   for _ in range(25)]
        assert guesses[-1] == 429 and set(guesses) == {401, 429}, guesses
        status = http("POST", f"{sec.url}/api/v1/messages", {"message": "after"}, customer)[0]
        attack.tried(admitted=status != 202)  # the attack here is the lock-out of a bystander
        assert status == 202, status
    finally:
        _clear_auth_failures(sec)

    # A distributed guess at one key: each address under its own limit, the prefix over its limit.
    proxied = sec.stack.daphne(env={"GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32"})
    prefix = sec.demo["api_keys"]["employee"].split("_")[1]
    employee = {"Authorization": f"Bearer {sec.demo['api_keys']['employee']}"}
    assert http("POST", f"{sec.url}/api/v1/messages", {"message": "known here"}, employee)[0] == 202
    since = last_audit_id(sec)
    try:
        statuses = []
        for n in range(30):
            headers = {"Authorization": f"Bearer gw_{prefix}_{uuid.uuid4().hex}",
                       "X-Forwarded-For": f"198.51.100.{n + 1}"}
            statuses.append(http("POST", f"{proxied}/api/v1/messages", {"message": "x"}, headers)[0])
        late = statuses[15:]
        for status in late:
            attack.tried(admitted=status != 429, audited=audited(sec, "apikey.auth_blocked", since) > 0)
        assert set(late) == {429}, statuses
        # The key's owner, from an address where it has worked before, is still served.
        assert http("POST", f"{sec.url}/api/v1/messages", {"message": "still mine"}, employee)[0] == 202
    finally:
        _clear_auth_failures(sec)


# --- admin-written route patterns (last: before the fix it hangs the server) -------------------------


def test_a_catastrophic_route_pattern_cannot_hang_the_router(sec, attack):
    """Must hold: a route pattern that backtracks for ever (``^(a|a)*$``) is refused at save or
    given up on at match time (GATEWAY_ROUTE_REGEX_TIMEOUT_SECONDS): messages are still answered."""
    staff = AdminClient(sec.url).login(sec.demo["staff"]["username"], sec.demo["staff"]["password"])
    agent = sql(sec, "SELECT id FROM agents_agent ORDER BY id LIMIT 1")[0][0]
    _status, form = staff.form("/admin/routing/route/add/", "route_form")
    staff.post("/admin/routing/route/add/", form.set("name", "evil").set("priority", "1").set("enabled", "on")
               .set("agent", agent).set("pattern", "^(a|a)*$").set("metadata", "{}").set("_save", "Save"))
    saved = sql(sec, "SELECT count(*) FROM routing_route WHERE name = 'evil'")[0][0]
    if not saved:  # refused at save: plant it as an older row would be, and attack the router anyway
        sec.stack.manage("shell", "-c", "from apps.routing.models import Route; from apps.agents.models import Agent; "
                         f"Route.objects.create(name='evil', priority=1, agent=Agent.objects.get(pk={agent}), "
                         "pattern='^(a|a)*$')")
    customer = {"Authorization": f"Bearer {sec.demo['api_keys']['customer']}"}
    try:
        started = time.monotonic()
        status, body, _ = http("POST", f"{sec.url}/api/v1/messages", {"message": "a" * 60 + "!", "wait": 20},
                               customer, timeout=40)
    except OSError as exc:  # the socket timed out: the server is stuck in the pattern
        status, body = None, repr(exc)
    attack.tried(admitted=status != 200)
    assert status == 200, (status, body, time.monotonic() - started)
    # and the next message too
    assert http("POST", f"{sec.url}/api/v1/messages", {"message": "a" * 60 + "!", "wait": 20}, customer,
                timeout=40)[0] == 200
    sec.stack.manage("shell", "-c", "from apps.routing.models import Route; Route.objects.filter(name='evil').delete()")
