"""Deployment defaults attacked from the outside (issue 15, item 10).

- A published or short SECRET_KEY outside DEBUG: the real processes (manage.py, Daphne, a Celery
  worker) refuse to start.
- docker-compose.yml's settings pass ``manage.py check --deploy``, and compose itself refuses to
  start without a SECRET_KEY of the operator's.
- Demo secrets cannot be computed: keys and webhook secrets derived the old way (from SECRET_KEY,
  whose default was public) open nothing.
- Seeding twice after staff disabled the demo superuser, changed its password, revoked a demo key and
  disabled a demo channel leaves all of that as staff left it.
- The compose start-up script (scripts/setup.sh) seeds nothing unless SEED_DEMO=1, creates the first
  superuser from DJANGO_SUPERUSER_* once, and never touches it again.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest
import yaml
from django.contrib.auth.hashers import make_password
from django.utils.module_loading import import_string

from apps.connectors.crm import sign as crm_sign
from devtools.stack import BASE_DIR, BIN, PYTHON, Stack, base_env, http
from tests.security.conftest import sql

# Every SECRET_KEY placeholder this project has published (settings default, docker-compose.yml,
# .env.example), plus two unfit keys of the operator's own.
PUBLISHED_KEYS = [
    "dev-only-insecure-secret-key-change-me-in-production",
    "change-me-in-production",
    "change-me-to-a-long-random-string",
]
UNFIT_KEYS = [secrets.token_urlsafe(64)[:49], "ab" * 40]
REFUSAL = "SECRET_KEY is unsafe"


def strong_key() -> str:
    return secrets.token_urlsafe(64)


def child_env(**overrides: str) -> dict[str, str]:
    """A process environment on the embedded default (nothing to connect to) plus ``overrides``."""
    return base_env(**overrides)


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=120)


def refused_at_start(args: list[str], env: dict[str, str]) -> tuple[bool, str]:
    """Start a server process; (whether it exited on its own with an error, its output).

    A process still running after the deadline was admitted: it is killed and reported so.
    """
    process = subprocess.Popen(args, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return False, output
    return process.returncode != 0, output


# --- SECRET_KEY ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", PUBLISHED_KEYS + UNFIT_KEYS,
                         ids=["settings-default", "compose-default", "env-example", "49-chars", "2-distinct-chars"])
def test_manage_py_refuses_a_published_or_short_secret_key_outside_debug(key, attack):
    done = manage(child_env(DEBUG="false", SECRET_KEY=key), "check")
    attack.tried(admitted=done.returncode == 0)
    assert done.returncode != 0 and REFUSAL in done.stderr, done.stdout + done.stderr


def test_the_servers_refuse_the_old_compose_default_key(attack):
    env = child_env(DEBUG="false", SECRET_KEY="change-me-in-production")
    for args in (
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", "0", "gateway_project.asgi:application"],
        [str(BIN / "celery"), "-A", "gateway_project", "worker", "-P", "solo", "-l", "INFO"],
    ):
        refused, output = refused_at_start(args, env)
        attack.tried(admitted=not refused)
        assert refused and REFUSAL in output, output


def test_a_strong_key_or_debug_starts():
    """The controls: the refusal is about the key, not about starting at all."""
    assert manage(child_env(DEBUG="false", SECRET_KEY=strong_key()), "check").returncode == 0
    assert manage(child_env(DEBUG="true", SECRET_KEY="change-me-in-production"), "check").returncode == 0


# --- docker-compose.yml ------------------------------------------------------------------------


def compose_environment(service: str, **operator: str) -> dict[str, str]:
    """``service``'s environment as compose would resolve it with the operator's ``.env`` values.

    ``${VAR:-default}`` takes the operator's value or the default; ``${VAR:?message}`` must be given.
    """
    spec = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"][service]["environment"]

    def resolve(match: re.Match) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if operator.get(name):
            return operator[name]
        if kind == ":?":
            raise KeyError(f"compose refuses to start without {name}: {rest}")
        return rest or ""

    pattern = re.compile(r"\$\{(\w+)(:-|:\?)?([^}]*)\}")
    return {name: pattern.sub(resolve, str(value)) for name, value in spec.items()}


def test_compose_requires_the_operators_secret_key(attack):
    with pytest.raises(KeyError, match="SECRET_KEY"):
        compose_environment("gateway")
    attack.tried(admitted=False)
    for service in ("migrate", "gateway", "worker", "beat"):
        env = compose_environment(service, SECRET_KEY="change-me-in-production")
        done = manage(child_env(**env), "check")
        attack.tried(admitted=done.returncode == 0)
        assert done.returncode != 0 and REFUSAL in done.stderr, done.stderr


def test_check_deploy_passes_on_the_compose_settings():
    """``check --deploy`` with compose's environment, as operators run it, and with the middleware
    named as Django's checks can see them (tests/security/deploy_settings.py): no security warning
    but W021 (HSTS preload: an opt-in to browser preload lists, deliberately left to the operator)."""
    env = child_env(**compose_environment("gateway", SECRET_KEY=strong_key()))
    as_run = manage(env, "check", "--deploy")
    assert as_run.returncode == 0, as_run.stdout + as_run.stderr
    assert "security." not in as_run.stdout + as_run.stderr
    judged = manage({**env, "DJANGO_SETTINGS_MODULE": "tests.security.deploy_settings"},
                    "check", "--deploy", "--tag", "security")
    assert judged.returncode == 0, judged.stdout + judged.stderr
    assert set(re.findall(r"security\.[EW]\d+", judged.stdout + judged.stderr)) <= {"security.W021"}, judged.stderr
    # What makes that substitution (and the settings' silencing of W001-W003) faithful.
    from django.conf import settings

    from tests.security.deploy_settings import DJANGO_PARENTS

    ours_alone = {"apps.logs.middleware.RequestContextMiddleware", "apps.quotas.middleware.BrowserGuardMiddleware"}
    assert set(settings.MIDDLEWARE) <= set(DJANGO_PARENTS) | ours_alone
    for ours, django_middleware in DJANGO_PARENTS.items():
        assert issubclass(import_string(ours), import_string(django_middleware))


def test_check_deploy_catches_plain_http_settings():
    """The control: the same judgement on the settings' own plain-HTTP defaults does warn."""
    env = child_env(SECRET_KEY=strong_key(), DEBUG="false", DJANGO_SETTINGS_MODULE="tests.security.deploy_settings")
    judged = manage(env, "check", "--deploy", "--tag", "security")
    assert {"security.W004", "security.W008", "security.W012", "security.W016"} <= set(
        re.findall(r"security\.[EW]\d+", judged.stdout + judged.stderr))


def test_compose_https_settings_redirect_browsers_but_not_probes(tmp_path):
    """Daphne with compose's environment (on the embedded default: nothing else to reach): plain
    HTTP is sent to https, except the probes; behind the TLS proxy (X-Forwarded-Proto) pages are
    served with HSTS and secure cookies."""
    compose = compose_environment("gateway", SECRET_KEY=strong_key())
    env = base_env(**{name: value for name, value in compose.items() if name not in ("DATABASE_URL", "REDIS_URL")},
                   DATABASE_URL=f"sqlite:///{tmp_path / 'gateway.sqlite3'}")
    stack = Stack(env, log_dir=tmp_path)
    try:
        stack.manage("migrate", "--noinput")  # the browser pages read the IP rules
        url = stack.daphne()  # it waits for /healthz over plain HTTP: the probe is exempt
        opener = urllib.request.build_opener(_NoRedirect())

        def get(path: str, headers: dict | None = None):
            try:
                with opener.open(urllib.request.Request(f"{url}{path}", headers=headers or {}), timeout=30) as r:
                    return r.status, r.headers
            except urllib.error.HTTPError as error:
                return error.code, error.headers

        status, headers = get("/admin/login/")
        assert status == 301 and headers["Location"].startswith("https://"), (status, dict(headers))
        status, headers = get("/admin/login/", {"X-Forwarded-Proto": "https"})
        assert status == 200 and "max-age=31536000" in headers["Strict-Transport-Security"]
        assert all("Secure" in cookie for cookie in headers.get_all("Set-Cookie"))
        assert get("/readyz")[0] != 301
    finally:
        stack.stop()


# --- demo secrets and seeding ------------------------------------------------------------------


def old_demo_key(secret_key: str, role: str) -> str:
    """How demo API keys were derived before: from SECRET_KEY alone."""
    hexed = hmac.new(secret_key.encode(), f"demo-api-key:{role}".encode(), hashlib.sha256).hexdigest()
    return f"gw_{hexed[:8]}_{hexed[8:56]}"


def old_demo_secret(secret_key: str, name: str) -> str:
    return hmac.new(secret_key.encode(), f"demo-channel:{name}".encode(), hashlib.sha256).hexdigest()[:32]


def test_demo_keys_and_webhook_secrets_cannot_be_computed(sec, attack):
    from django.conf import settings

    # The published defaults, and this install's own SECRET_KEY (the stack inherits our settings).
    for secret_key in [*PUBLISHED_KEYS, settings.SECRET_KEY]:
        for role in ("customer", "employee", "admin"):
            status, _body, _ = http("GET", f"{sec.url}/api/v1/usage",
                                    headers={"Authorization": f"Bearer {old_demo_key(secret_key, role)}"})
            attack.tried(admitted=status != 401)
            assert status == 401
        body = json.dumps({"id": f"computed-{secrets.token_hex(4)}", "user_id": "u-1", "message": "hi"}).encode()
        stamp = str(int(time.time()))
        status, _body, _ = http_raw(f"{sec.url}/api/v1/channels/crm/webhook", body, {
            "X-Gateway-Timestamp": stamp,
            "X-Gateway-Signature": crm_sign(old_demo_secret(secret_key, "crm"), stamp, body)})
        attack.tried(admitted=status != 401)
        assert status == 401
    # The control: the printed key works.
    status, _body, _ = http("GET", f"{sec.url}/api/v1/usage",
                            headers={"Authorization": f"Bearer {sec.demo['api_keys']['customer']}"})
    assert status == 200


def http_raw(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def admin_login(base_url: str, username: str, password: str) -> bool:
    """Log in through the admin's login form, as a browser would; True if it let us in."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
    page = opener.open(f"{base_url}/admin/login/", timeout=30).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password,
                                   "next": "/admin/"}).encode()
    request = urllib.request.Request(f"{base_url}/admin/login/", data=form, method="POST",
                                     headers={"Referer": f"{base_url}/admin/login/"})
    try:
        opener.open(request, timeout=30)
        return False  # 200: the form again, with an error
    except urllib.error.HTTPError as error:
        return error.code == 302 and error.headers.get("Location", "").endswith("/admin/")


def test_seeding_twice_never_undoes_what_staff_did(sec, attack):
    demo = sec.demo
    staff_password, customer_key = demo["staff"]["password"], demo["api_keys"]["customer"]
    assert admin_login(sec.url, "staff", staff_password)  # the control: the printed password works
    prefix = customer_key.split("_")[1]
    [(original_hash,)] = sql(sec, "SELECT password FROM identities_user WHERE username = 'staff'")
    their_password = secrets.token_urlsafe(16)
    their_hash = make_password(their_password)
    try:
        sql_write(sec, "UPDATE identities_user SET is_active = false, password = %s WHERE username = 'staff'",
                  their_hash)
        sql_write(sec, "UPDATE identities_apikey SET revoked_at = now() WHERE prefix = %s", prefix)
        sql_write(sec, "UPDATE connectors_channel SET enabled = false WHERE slug = 'wecom-robot'")
        for _ in range(2):
            printed = json.loads(sec.stack.manage("seed_demo", "--json"))

        [(active, password_hash)] = sql(sec, "SELECT is_active, password FROM identities_user WHERE username = 'staff'")
        [(revoked_at,)] = sql(sec, "SELECT revoked_at FROM identities_apikey WHERE prefix = %s", prefix)
        [(robot_enabled,)] = sql(sec, "SELECT enabled FROM connectors_channel WHERE slug = 'wecom-robot'")
        assert (active, password_hash == their_hash, revoked_at is not None, robot_enabled) == (
            False, True, True, False)
        assert printed["staff"]["password"] is None and printed["api_keys"]["customer"] is None
        assert printed["api_keys"]["employee"] == demo["api_keys"]["employee"]  # the rest is unchanged

        for password in (staff_password, their_password):
            let_in = admin_login(sec.url, "staff", password)
            attack.tried(admitted=let_in)
            assert not let_in
        status, _body, _ = http("GET", f"{sec.url}/api/v1/usage", headers={"Authorization": f"Bearer {customer_key}"})
        attack.tried(admitted=status != 401)
        assert status == 401
    finally:
        sql_write(sec, "UPDATE identities_user SET is_active = true, password = %s WHERE username = 'staff'",
                  original_hash)
        sql_write(sec, "UPDATE identities_apikey SET revoked_at = NULL WHERE prefix = %s", prefix)
        sql_write(sec, "UPDATE connectors_channel SET enabled = true WHERE slug = 'wecom-robot'")


def sql_write(sec, query: str, *params) -> None:
    import psycopg

    with psycopg.connect(sec.database, connect_timeout=5) as conn:
        conn.execute(query, params)


def test_compose_start_up_seeds_only_when_asked_and_keeps_the_first_superuser(sec, attack):
    """scripts/setup.sh (docker-compose's migrate service) on a fresh database of its own."""
    database = sec.pg.create_database(f"setup_{secrets.token_hex(3)}")
    admin_password = secrets.token_urlsafe(16)
    env = {**sec.stack.env, "DATABASE_URL": database, "PATH": f"{BIN}:{sec.stack.env.get('PATH', '')}",
           "DJANGO_SUPERUSER_USERNAME": "root-admin", "DJANGO_SUPERUSER_PASSWORD": admin_password,
           "DJANGO_SUPERUSER_EMAIL": "root@example.com"}
    env.pop("SEED_DEMO", None)

    def setup(**extra: str) -> None:
        done = subprocess.run(["sh", "scripts/setup.sh"], cwd=BASE_DIR, env={**env, **extra},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    def rows(query: str, *params):
        import psycopg

        with psycopg.connect(database, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    setup()
    assert rows("SELECT username, is_superuser, is_active FROM identities_user") == [("root-admin", True, True)]
    assert rows("SELECT count(*) FROM identities_apikey") == [(0,)]
    attack.tried(admitted=rows("SELECT count(*) FROM identities_user WHERE username = 'staff'") != [(0,)])

    with psycopg_connect(database) as conn:
        conn.execute("UPDATE identities_user SET is_active = false WHERE username = 'root-admin'")
    [(hash_before,)] = rows("SELECT password FROM identities_user WHERE username = 'root-admin'")
    setup(DJANGO_SUPERUSER_PASSWORD=secrets.token_urlsafe(16))
    assert rows("SELECT is_active, password FROM identities_user WHERE username = 'root-admin'") == [
        (False, hash_before)]
    attack.tried(admitted=False)

    setup(SEED_DEMO="1")
    assert rows("SELECT count(*) FROM identities_user WHERE username = 'staff'") == [(1,)]
    second = json.loads(subprocess.run([PYTHON, "manage.py", "seed_demo", "--json"], cwd=BASE_DIR, env=env,
                                       capture_output=True, text=True, timeout=120, check=True).stdout)
    # Another install with the same SECRET_KEY: none of its demo secrets are the first install's.
    for role, key in second["api_keys"].items():
        assert key and key != sec.demo["api_keys"][role]
    assert second["staff"]["password"] != sec.demo["staff"]["password"]
    for kind in ("slack", "wecom", "crm"):
        first, other = sec.demo["channels"][kind], second["channels"][kind]
        secret_names = {"signing_secret", "bot_token", "token", "encoding_aes_key", "secret"} & set(first)
        assert secret_names and all(first[name] != other[name] for name in secret_names)


def psycopg_connect(url: str):
    import psycopg

    return psycopg.connect(url, connect_timeout=5)


def test_an_upgraded_install_loses_the_published_demo_secrets(sec, attack):
    """An install seeded the old way (staff/gateway-demo, demo keys derived from the compose default
    key) is upgraded: migrating alone (no seed_demo) retires both."""
    old_key = old_demo_key("change-me-in-production", "customer")
    sec.stack.manage("migrate", "connectors", "0004")  # before the retiring migration
    sec.stack.manage("shell", "-c", (
        "from apps.identities.models import ApiKey, User, hash_api_key\n"
        "staff = User.objects.get(username='staff'); staff.set_password('gateway-demo'); staff.save()\n"
        f"ApiKey.objects.create(user=User.objects.get(username='demo-customer'), name='demo', "
        f"prefix='{old_key.split('_')[1]}', key_hash=hash_api_key('{old_key}'))\n"))
    # The control: as planted, both open the door.
    assert admin_login(sec.url, "staff", "gateway-demo")
    assert http("GET", f"{sec.url}/api/v1/usage", headers={"Authorization": f"Bearer {old_key}"})[0] == 200

    sec.stack.manage("migrate", "--noinput")
    let_in = admin_login(sec.url, "staff", "gateway-demo")
    attack.tried(admitted=let_in)
    status = http("GET", f"{sec.url}/api/v1/usage", headers={"Authorization": f"Bearer {old_key}"})[0]
    attack.tried(admitted=status != 401)
    assert (let_in, status) == (False, 401)
    # The install's own demo password (the one seed_demo prints) is what staff has now.
    assert admin_login(sec.url, "staff", json.loads(sec.stack.manage("seed_demo", "--json"))["staff"]["password"])
