"""Settings, all read from the environment (see .env.example).

Two ways to run:
- embedded default (no DATABASE_URL / REDIS_URL): SQLite, in-memory channel layer, local-memory
  cache, Celery tasks run in-process off the event loop;
- services (DATABASE_URL + REDIS_URL): PostgreSQL, Redis cache and channel layer, Celery workers.
"""
import importlib.util
import urllib.parse
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from gateway_project import plain, secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# Overrides of library internals to run the library's own way instead, to measure them
# (gateway_project/plain.py, bench/overrides_ab.py). Empty: the gateway's usual behaviour.
GATEWAY_PLAIN = plain.parse(env.str("GATEWAY_PLAIN", default=""))
# Unset: generated once per checkout in var/secret-key; a published placeholder or a short key is
# refused outside DEBUG (ImproperlyConfigured at start-up; gateway_project/secret_key.py).
SECRET_KEY = secret_key.resolve(env.str("SECRET_KEY", default=""), debug=DEBUG,
                                generated_path=BASE_DIR / "var" / "secret-key")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# HTTPS hardening (`manage.py check --deploy`): off by default so that `make run` and the tests work
# over plain HTTP; docker-compose.yml turns them on. SECURE_PROXY_SSL_HEADER trusts the
# X-Forwarded-Proto of a TLS proxy in front (only behind a proxy that sets it).
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# Probes and scrapers on the private network speak plain HTTP to the container.
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|metrics)$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "daphne",
    "apps.identities.admin_site.GatewayAdminConfig",  # django.contrib.admin, refusing blocked staff
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "guardian",
    "apps.identities",
    "apps.connectors",
    "apps.conversations",
    "apps.agents",
    "apps.routing",
    "apps.quotas",
    "apps.logs",
    "apps.dashboards",
]
# The workbench (fake_llm, fake_platforms): present in a source checkout, absent from the
# installed package and the production image, which boot without it.
if importlib.util.find_spec("devtools") is not None:
    INSTALLED_APPS.append("devtools")

# Django's own middleware, as subclasses that spare Daphne a thread hop per hook
# (gateway_project/middleware.py); the behaviour on browser pages is Django's.
MIDDLEWARE = [
    "apps.logs.middleware.RequestContextMiddleware",  # first: the request id covers everything after
    "gateway_project.middleware.SecurityMiddleware",  # the HTTPS redirect before anything reads the database
    "apps.quotas.middleware.BrowserGuardMiddleware",  # IP rules and the login guard on the browser pages
    "gateway_project.middleware.SessionMiddleware",
    "gateway_project.middleware.CommonMiddleware",
    "gateway_project.middleware.CsrfViewMiddleware",
    "gateway_project.middleware.AuthenticationMiddleware",
    "gateway_project.middleware.MessageMiddleware",
    "gateway_project.middleware.XFrameOptionsMiddleware",
]
if "middleware" in GATEWAY_PLAIN:  # Django's own classes, in the same places
    MIDDLEWARE = [{
        "gateway_project.middleware.SecurityMiddleware": "django.middleware.security.SecurityMiddleware",
        "gateway_project.middleware.SessionMiddleware": "django.contrib.sessions.middleware.SessionMiddleware",
        "gateway_project.middleware.CommonMiddleware": "django.middleware.common.CommonMiddleware",
        "gateway_project.middleware.CsrfViewMiddleware": "django.middleware.csrf.CsrfViewMiddleware",
        "gateway_project.middleware.AuthenticationMiddleware":
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        "gateway_project.middleware.MessageMiddleware": "django.contrib.messages.middleware.MessageMiddleware",
        "gateway_project.middleware.XFrameOptionsMiddleware": "django.middleware.clickjacking.XFrameOptionsMiddleware",
    }.get(path, path) for path in MIDDLEWARE]

# Django's security.W001-W003 look for its middleware by dotted name; ours are subclasses of
# SecurityMiddleware, XFrameOptionsMiddleware and CsrfViewMiddleware with Django's behaviour on
# browser pages (tests/security/test_deploy_defaults.py pins that they stay so).
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "gateway_project.urls"
ASGI_APPLICATION = "gateway_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Services -------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
SERVICES_MODE = bool(REDIS_URL)

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Worker threads and the server share one file: wait for the lock instead of failing. A deferred
    # transaction (BEGIN) that reads, then writes while another thread writes, is refused at once
    # whatever the timeout (SQLite will not wait where waiting could deadlock); IMMEDIATE takes the
    # write lock at BEGIN, where the timeout applies (tests/test_sqlite_locking.py).
    DATABASES["default"].setdefault("OPTIONS", {}).update(timeout=20, transaction_mode="IMMEDIATE")
    DATABASES["default"].setdefault("TEST", {})["NAME"] = BASE_DIR / "test-db.sqlite3"
elif env.bool("DATABASE_POOL", default=True):
    # psycopg 3's connection pool (Django 5.1+): a request or task borrows an open connection and
    # gives it back, instead of opening one (TCP + auth + session setup) every time. The pool checks
    # each connection it lends (CONN_HEALTH_CHECKS), so after a PostgreSQL restart a dead one is
    # replaced instead of failing a statement. Agent runs give theirs back while a model answers
    # (apps.agents.model_call.call_model).
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # required with a pool: "closing" returns it
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
        "timeout": env.float("DATABASE_POOL_TIMEOUT_SECONDS", default=10.0),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE_SECONDS", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env.bool(
        "DATABASE_PREPARED_STATEMENTS", default=True):
    # Parameters bound by the server, and a statement prepared the fifth time a (pooled, long-lived)
    # connection runs it, so PostgreSQL stops planning it again: the agent run's claim spent 0.6 ms
    # of its 0.7 ms in the planner. DATABASE_PREPARED_STATEMENTS=false turns both off (PgBouncer in
    # transaction mode cannot keep prepared statements).
    DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)

# Long-lived Redis connections that only wait for data (the channel layer's subscription, the
# worker's BRPOP) are checked this often: one closed without notice (Redis failed over or restarted
# behind an address that stayed) is dropped and opened again within a few such intervals.
GATEWAY_REDIS_HEALTH_CHECK_SECONDS = env.int("GATEWAY_REDIS_HEALTH_CHECK_SECONDS", default=2)
# The channel layer's prefix. Redis pub/sub ignores the database number: two gateways sharing one
# Redis must each set their own, or each hears the other's replies and chat events.
GATEWAY_CHANNEL_LAYER_PREFIX = env.str("GATEWAY_CHANNEL_LAYER_PREFIX", default="asgi")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "gateway_project.redis_pool.SharedRedisCache",
            "LOCATION": REDIS_URL,
            # One pool and one client per process, not one per thread, request or call
            # (gateway_project/redis_pool.py).
            "OPTIONS": {"pool_class": "gateway_project.redis_pool.SharedConnectionPool"},
        }
    }
    if "redis_pool" in GATEWAY_PLAIN:
        CACHES["default"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    from gateway_project.redis_pool import STALE_CONNECTION_RETRY_ASYNC

    CHANNEL_LAYERS = {
        "default": {
            # Redis pub/sub: one subscription connection per server process carries the events of
            # every waiter and web chat socket in it (no blocking receive, so no Redis connection,
            # per waiter); workers publish with one synchronous PUBLISH (docs/decisions/reply-bus.md).
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # The subscription only reads: a PING every GATEWAY_REDIS_HEALTH_CHECK_SECONDS finds it
            # dead when Redis went away without closing it (a failover), and the layer subscribes
            # again; a command on a dead connection is tried once more (gateway_project/redis_pool.py).
            "CONFIG": {"hosts": [{"address": REDIS_URL, "retry": STALE_CONNECTION_RETRY_ASYNC,
                                  "health_check_interval": GATEWAY_REDIS_HEALTH_CHECK_SECONDS}],
                       "prefix": GATEWAY_CHANNEL_LAYER_PREFIX},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # Each server's one reply inbox takes every waiting request's events: room for bursts.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 10_000}}}

# Where processes tell each other that the configuration changed (gateway_project/config_cache.py):
# Redis with services; on the embedded default a file beside the database, so that a command run
# from another shell (seed_demo, create_api_key, ...) reaches the running server too.
CACHES["config"] = CACHES["default"] if REDIS_URL else {
    "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
    "LOCATION": env.str("GATEWAY_CONFIG_GENERATION_DIR", default=str(BASE_DIR / "var" / "config-generation")),
}
# Channels, agents, routes, key scopes, roles, quota policies and IP rules are kept in each
# process; a change made elsewhere applies here within this many seconds
# (gateway_project/config_cache.py).
GATEWAY_CONFIG_CHECK_SECONDS = env.float("GATEWAY_CONFIG_CHECK_SECONDS", default=1.0)
GATEWAY_CONFIG_CACHE_MAX_ENTRIES = env.int("GATEWAY_CONFIG_CACHE_MAX_ENTRIES", default=20000)

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# There is no result backend: the "disabled" one is safe to share between threads. Without this,
# Celery builds it again on every new thread, and Django's ASGI handler runs each request's sync
# code on a new thread, so every enqueue paid for a backend built from the configuration.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
# How accepted messages reach an agent run (apps.agents.dispatch): "celery" (a worker, through
# the broker) or "thread" (embedded default: a thread pool in this process, off the event loop).
GATEWAY_AGENT_DISPATCH = env.str("GATEWAY_AGENT_DISPATCH", default="celery" if SERVICES_MODE else "thread")
CELERY_TASK_ACKS_LATE = True
if CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
    # RabbitMQ (docs/brokers.md). After a reconnect with runs in flight, Celery lowers the prefetch
    # and raises it again as those runs are acknowledged: a basic.qos round trip made from the pool
    # thread that acknowledged, while the main thread reads the same connection. With the threads
    # pool that thread never sees the reply and the worker stops taking runs; keep the prefetch fixed.
    CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # A message whose worker died is redelivered after this long (acks_late).
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_SECONDS", default=600),
}
if CELERY_BROKER_URL.partition("://")[0] in ("redis", "rediss", "redis+socket", "sentinel"):
    # Connections per pool of each kombu channel. A gevent worker acknowledges its runs from as
    # many greenlets as it holds runs (-c), all at once when they finish together; past this bound
    # an ack fails ("Too many connections") and the worker drops its broker connection, stranding
    # what it had taken. Connections open as needed and stay open: keep it at the worker's -c.
    CELERY_BROKER_TRANSPORT_OPTIONS["max_connections"] = env.int("CELERY_BROKER_MAX_CONNECTIONS", default=1000)
    # kombu drops a BRPOP whose reply is overdue by this long and opens another (its default, 25 s,
    # left a worker deaf for 45 s after a failover); also redis-py's PING before a command on a
    # connection idle this long.
    CELERY_BROKER_TRANSPORT_OPTIONS["health_check_interval"] = GATEWAY_REDIS_HEALTH_CHECK_SECONDS
# The queue agent runs (and every other task) go to; workers consume it (`-Q`).
CELERY_TASK_DEFAULT_QUEUE = env.str("GATEWAY_AGENT_QUEUE", default="gateway")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Periodic (celery beat): re-enqueue messages stranded in accepted / expired processing.
GATEWAY_REQUEUE_INTERVAL_SECONDS = env.float("GATEWAY_REQUEUE_INTERVAL_SECONDS", default=30.0)
GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS = env.int("GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS", default=60)
GATEWAY_REQUEUE_MAX_AGE_SECONDS = env.int("GATEWAY_REQUEUE_MAX_AGE_SECONDS", default=24 * 3600)
GATEWAY_REQUEUE_BATCH_SIZE = env.int("GATEWAY_REQUEUE_BATCH_SIZE", default=500)
# The embedded default runs the same recovery in the server process (at startup, then every interval).
GATEWAY_EMBEDDED_RECOVERY = env.bool("GATEWAY_EMBEDDED_RECOVERY", default=True)
# Apps add their own entries below (search "CELERY_BEAT_SCHEDULE[").
CELERY_BEAT_SCHEDULE: dict = {
    "requeue-stuck-messages": {
        "task": "agents.requeue_stuck_messages",
        "schedule": GATEWAY_REQUEUE_INTERVAL_SECONDS,
    },
}

# --- Auth -----------------------------------------------------------------------------------
AUTH_USER_MODEL = "identities.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/admin/login/"
# An unknown sender whose channel vouches for their email (metadata["verified_email"]) is linked to
# the one existing user with that email instead of becoming a new customer.
IDENTITY_LINK_VERIFIED_EMAIL = env.bool("IDENTITY_LINK_VERIFIED_EMAIL", default=False)

# --- HTTP -----------------------------------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("GATEWAY_MAX_BODY_BYTES", default=256 * 1024)
# JSON from outside nesting deeper than this is refused (400) before it is parsed
# (gateway_project/json_limits.py): Python's decoder recurses per level.
GATEWAY_JSON_MAX_DEPTH = env.int("GATEWAY_JSON_MAX_DEPTH", default=64)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.identities.authentication.ApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["apps.conversations.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "apps.core.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Gateway API",
    "DESCRIPTION": "One front door for channels (API, web chat, Slack, WeCom, CRM) to AI agents.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI served from the project itself: the gateway works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Gateway --------------------------------------------------------------------------------
GATEWAY_MAX_MESSAGE_CHARS = env.int("GATEWAY_MAX_MESSAGE_CHARS", default=8000)
GATEWAY_API_WAIT_MAX_SECONDS = env.float("GATEWAY_API_WAIT_MAX_SECONDS", default=120.0)
# How long POST /v1/chat/completions waits for the agent's answer (or between streamed pieces' end).
GATEWAY_OPENAI_REPLY_TIMEOUT_SECONDS = env.float("GATEWAY_OPENAI_REPLY_TIMEOUT_SECONDS", default=120.0)
GATEWAY_USER_RATE = env.str("GATEWAY_USER_RATE", default="60/m")
# API key brute force: this many failed authentications per client IP per window, then 429.
GATEWAY_AUTH_FAILURES_PER_IP = env.int("GATEWAY_AUTH_FAILURES_PER_IP", default=20)
GATEWAY_AUTH_FAILURE_WINDOW_SECONDS = env.int("GATEWAY_AUTH_FAILURE_WINDOW_SECONDS", default=300)
# Failures naming one key (wrong secret, revoked, expired), from any addresses, before that key is
# locked; and how long a key that worked from an address stays exempt there (apps.quotas.auth_failures).
GATEWAY_AUTH_FAILURES_PER_KEY = env.int("GATEWAY_AUTH_FAILURES_PER_KEY", default=10)
GATEWAY_AUTH_KNOWN_GOOD_SECONDS = env.int("GATEWAY_AUTH_KNOWN_GOOD_SECONDS", default=86400)
# API key rotation: how long the replaced secret keeps working unless told otherwise, and the most
# a rotation may give it (apps.identities.services.api_key_rotate).
GATEWAY_API_KEY_ROTATION_GRACE_SECONDS = env.int("GATEWAY_API_KEY_ROTATION_GRACE_SECONDS", default=86400)
GATEWAY_API_KEY_ROTATION_MAX_GRACE_SECONDS = env.int("GATEWAY_API_KEY_ROTATION_MAX_GRACE_SECONDS", default=2592000)
# Admin password guessing: this many failed logins per client IP per the window above, then 429.
GATEWAY_ADMIN_LOGIN_FAILURES_PER_IP = env.int("GATEWAY_ADMIN_LOGIN_FAILURES_PER_IP", default=10)
# Traffic and spend control (apps/quotas, README "Traffic and spend control"). Rates: "20/m", "500/h",
# "5/10s", "1000/d"; empty: no limit unless a policy sets one.
GATEWAY_API_KEY_RATE = env.str("GATEWAY_API_KEY_RATE", default="")
GATEWAY_CHANNEL_RATE = env.str("GATEWAY_CHANNEL_RATE", default="")
GATEWAY_IP_RATE = env.str("GATEWAY_IP_RATE", default="")
# Webhook channels' requests all come from the platform's servers: no per-address rate there.
GATEWAY_IP_RATE_EXEMPT_KINDS = env.list(
    "GATEWAY_IP_RATE_EXEMPT_KINDS", default=["slack", "wecom", "wecom_robot", "crm",
                                             "hubspot", "zendesk", "wecom_aibot"]
)
# Reverse proxies (CIDRs) whose X-Forwarded-For hops are believed; empty: the TCP peer is the client.
GATEWAY_TRUSTED_PROXIES = env.list("GATEWAY_TRUSTED_PROXIES", default=[])
# Budget counters: Redis (services) or, when empty, a process-local ledger (embedded default).
GATEWAY_QUOTA_REDIS_URL = env.str("GATEWAY_QUOTA_REDIS_URL", default=REDIS_URL)
# Redis pools (publishing, the cache, the budget counters) that wait for a free connection (up to
# the timeout) instead of refusing with MaxConnectionsError when every connection is busy.
GATEWAY_REDIS_POOL_MAX_CONNECTIONS = env.int("GATEWAY_REDIS_POOL_MAX_CONNECTIONS", default=100)
GATEWAY_REDIS_POOL_TIMEOUT_SECONDS = env.float("GATEWAY_REDIS_POOL_TIMEOUT_SECONDS", default=5.0)
# Requests waiting for a reply (API `wait`, the OpenAI face) per server process; past it, 503 with
# Retry-After (docs/operations.md).
GATEWAY_MAX_WAITERS_PER_PROCESS = env.int("GATEWAY_MAX_WAITERS_PER_PROCESS", default=2000)
GATEWAY_OVERLOAD_RETRY_AFTER_SECONDS = env.int("GATEWAY_OVERLOAD_RETRY_AFTER_SECONDS", default=2)
GATEWAY_QUOTA_REDIS_TIMEOUT_SECONDS = env.float("GATEWAY_QUOTA_REDIS_TIMEOUT_SECONDS", default=1.0)
# A reservation stops counting this long after its process last renewed it (every third of it
# while its call runs): only a worker that died leaves one to lapse.
GATEWAY_QUOTA_RESERVATION_TTL_SECONDS = env.int("GATEWAY_QUOTA_RESERVATION_TTL_SECONDS", default=600)
GATEWAY_QUOTA_DEFAULT_MAX_TOKENS = env.int("GATEWAY_QUOTA_DEFAULT_MAX_TOKENS", default=1024)
# What is left of a budget held by other calls in flight: a run is tried again (queued, holding no
# worker) for this long while they settle, then its sender is told to retry in
# GATEWAY_QUOTA_BUSY_RETRY_SECONDS (docs/limits.md).
GATEWAY_QUOTA_BUSY_WAIT_SECONDS = env.float("GATEWAY_QUOTA_BUSY_WAIT_SECONDS", default=30.0)
GATEWAY_QUOTA_BUSY_RETRY_SECONDS = env.int("GATEWAY_QUOTA_BUSY_RETRY_SECONDS", default=5)
# Budget alerts (docs/limits.md): a budget reaching each of these percents of its limit in a period
# is recorded once (admin: Budget alerts) and, when a webhook is set, sent to it signed with its
# secret, every GATEWAY_BUDGET_ALERT_SEND_SECONDS; an empty list turns alerts off.
GATEWAY_BUDGET_ALERT_PERCENTS = env.list("GATEWAY_BUDGET_ALERT_PERCENTS", cast=int, default=[80, 100])
GATEWAY_BUDGET_ALERT_WEBHOOK_URL = env.str("GATEWAY_BUDGET_ALERT_WEBHOOK_URL", default="")
GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET = env.str("GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET", default="")
GATEWAY_BUDGET_ALERT_SEND_SECONDS = env.float("GATEWAY_BUDGET_ALERT_SEND_SECONDS", default=10.0)
GATEWAY_BUDGET_ALERT_MAX_ATTEMPTS = env.int("GATEWAY_BUDGET_ALERT_MAX_ATTEMPTS", default=12)
if any(not 0 < percent <= 100 for percent in GATEWAY_BUDGET_ALERT_PERCENTS):
    raise ImproperlyConfigured("GATEWAY_BUDGET_ALERT_PERCENTS: whole percents from 1 to 100, e.g. 80,100.")

def _http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
        (parts.hostname or "").encode("idna")  # raises on an empty or too long label ("hooks..example")
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and url.isprintable() and " " not in url


if GATEWAY_BUDGET_ALERT_WEBHOOK_URL and not _http_url(GATEWAY_BUDGET_ALERT_WEBHOOK_URL):
    # Else each send would fail before leaving, spending the alerts' attempts with no error to show.
    raise ImproperlyConfigured("GATEWAY_BUDGET_ALERT_WEBHOOK_URL: an http:// or https:// URL with a host "
                               "(and a numeric port, if any).")
if GATEWAY_BUDGET_ALERT_WEBHOOK_URL and len(GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET) < 16:
    raise ImproperlyConfigured("GATEWAY_BUDGET_ALERT_WEBHOOK_URL needs GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET "
                               "(16 characters or more): the receiver checks each alert's signature with it.")
GATEWAY_LIMIT_KEY_PREFIX = env.str("GATEWAY_LIMIT_KEY_PREFIX", default="gw")
# Redis unreachable: request rates let traffic through, budgets refuse (money is at stake).
GATEWAY_RATE_LIMIT_FAIL_OPEN = env.bool("GATEWAY_RATE_LIMIT_FAIL_OPEN", default=True)
GATEWAY_BUDGET_FAIL_OPEN = env.bool("GATEWAY_BUDGET_FAIL_OPEN", default=False)
GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS = env.int("GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS", default=5)
# A Slack/WeCom sender refused by a limit is told so at most once per this many seconds.
GATEWAY_REFUSAL_NOTICE_INTERVAL_SECONDS = env.int("GATEWAY_REFUSAL_NOTICE_INTERVAL_SECONDS", default=300)
GATEWAY_HISTORY_MESSAGES = env.int("GATEWAY_HISTORY_MESSAGES", default=20)
# A worker that claimed a message and then died loses it after this long.
GATEWAY_AGENT_LEASE_SECONDS = env.int("GATEWAY_AGENT_LEASE_SECONDS", default=300)
# Retry-After of the 503 given while PostgreSQL or Redis is unreachable.
GATEWAY_OUTAGE_RETRY_AFTER_SECONDS = env.int("GATEWAY_OUTAGE_RETRY_AFTER_SECONDS", default=5)
GATEWAY_EMBEDDED_WORKERS = env.int("GATEWAY_EMBEDDED_WORKERS", default=16)
# Agent runs (apps/agents/orchestrator.py): retries per model before the next of the fallback
# chain, exponential backoff between them, Retry-After honoured up to a cap; tool loop bound.
GATEWAY_LLM_RETRIES = env.int("GATEWAY_LLM_RETRIES", default=2)
# Model calls in flight per client connection pool: past it, a provider's calls spill into another
# client (apps.agents.llm.ClientPools; httpx walks a whole pool on every request). 0 = one pool.
GATEWAY_MODEL_CALLS_PER_POOL = env.int("GATEWAY_MODEL_CALLS_PER_POOL", default=4)
GATEWAY_LLM_BACKOFF_BASE_SECONDS = env.float("GATEWAY_LLM_BACKOFF_BASE_SECONDS", default=0.5)
GATEWAY_LLM_BACKOFF_MAX_SECONDS = env.float("GATEWAY_LLM_BACKOFF_MAX_SECONDS", default=8.0)
GATEWAY_LLM_RETRY_AFTER_MAX_SECONDS = env.float("GATEWAY_LLM_RETRY_AFTER_MAX_SECONDS", default=30.0)
GATEWAY_TOOL_MAX_STEPS = env.int("GATEWAY_TOOL_MAX_STEPS", default=4)
GATEWAY_TOOL_RESULT_MAX_CHARS = env.int("GATEWAY_TOOL_RESULT_MAX_CHARS", default=8000)
WEBCHAT_ALLOWED_ORIGINS = env.list("WEBCHAT_ALLOWED_ORIGINS", default=[])
WEBCHAT_VISITOR_TOKEN_MAX_AGE_SECONDS = env.int(
    "WEBCHAT_VISITOR_TOKEN_MAX_AGE_SECONDS", default=30 * 24 * 3600
)
# Anonymous web chat, per client address (rates as above; empty: no limit): new visitor tokens
# minted by the chat page, and websocket connections opened. A frame longer than
# WEBCHAT_MAX_FRAME_CHARS is refused before it is parsed (the server's own cap bounds what it
# buffers: Daphne's --websocket-max-message-size, 1 MiB by default; uvicorn's --ws-max-size, set to
# 1 MiB in the image's CMD, its default being 16 MiB).
WEBCHAT_VISITORS_PER_IP_RATE = env.str("WEBCHAT_VISITORS_PER_IP_RATE", default="30/m")
WEBCHAT_CONNECTS_PER_IP_RATE = env.str("WEBCHAT_CONNECTS_PER_IP_RATE", default="120/m")
WEBCHAT_MAX_FRAME_CHARS = env.int("WEBCHAT_MAX_FRAME_CHARS", default=64 * 1024)

OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="http://127.0.0.1:8001/v1")
# Environment variables a provider may name as its key (glob patterns): nothing else, so a provider
# cannot send SECRET_KEY or DATABASE_URL to its endpoint (apps.agents.models.key_env_allowed).
GATEWAY_PROVIDER_KEY_ENV_ALLOWED = env.list("GATEWAY_PROVIDER_KEY_ENV_ALLOWED", default=["*_API_KEY"])
# How long one route pattern may search one message; past it the rule counts as not matching.
GATEWAY_ROUTE_REGEX_TIMEOUT_SECONDS = env.float("GATEWAY_ROUTE_REGEX_TIMEOUT_SECONDS", default=0.05)
LLM_TIMEOUT_SECONDS = env.float("LLM_TIMEOUT_SECONDS", default=60.0)
SLACK_API_BASE_URL = env.str("SLACK_API_BASE_URL", default="https://slack.com/api")
WECOM_API_BASE_URL = env.str("WECOM_API_BASE_URL", default="https://qyapi.weixin.qq.com/cgi-bin")
# Feishu (China) and Lark (international) differ only here: https://open.larksuite.com for Lark.
FEISHU_API_BASE_URL = env.str("FEISHU_API_BASE_URL", default="https://open.feishu.cn")
# DingTalk's new-style APIs (access token, robot send); replies to a fresh message use its
# sessionWebhook instead, trusted only under DINGTALK_SESSION_WEBHOOK_BASE_URL.
DINGTALK_API_BASE_URL = env.str("DINGTALK_API_BASE_URL", default="https://api.dingtalk.com")
DINGTALK_SESSION_WEBHOOK_BASE_URL = env.str("DINGTALK_SESSION_WEBHOOK_BASE_URL", default="https://oapi.dingtalk.com")

# --- Connectors (Slack, WeCom, CRM webhooks) ------------------------------------------------
# Fernet key for channel secrets at rest; empty: derived from SECRET_KEY (see apps/core/field_key.py).
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="")
CONNECTOR_WEBHOOK_MAX_BODY_BYTES = env.int("CONNECTOR_WEBHOOK_MAX_BODY_BYTES", default=64 * 1024)
# Signed webhook requests older (or newer) than this are refused as replays.
CONNECTOR_SIGNATURE_MAX_AGE_SECONDS = env.int("CONNECTOR_SIGNATURE_MAX_AGE_SECONDS", default=300)
CONNECTOR_HTTP_TIMEOUT_SECONDS = env.float("CONNECTOR_HTTP_TIMEOUT_SECONDS", default=10.0)
# Outbound sends: attempts, first backoff (doubles each time), and the longest wait we accept.
CONNECTOR_SEND_ATTEMPTS = env.int("CONNECTOR_SEND_ATTEMPTS", default=4)
CONNECTOR_SEND_BACKOFF_SECONDS = env.float("CONNECTOR_SEND_BACKOFF_SECONDS", default=0.5)
CONNECTOR_SEND_MAX_WAIT_SECONDS = env.float("CONNECTOR_SEND_MAX_WAIT_SECONDS", default=30.0)
WECOM_ROBOT_MESSAGES_PER_MINUTE = env.int("WECOM_ROBOT_MESSAGES_PER_MINUTE", default=20)
# WeCom AI bot: WeCom refreshes a streamed reply for 6 minutes after the message; past this, the
# stream is closed with what is there and the answer goes to the message's response_url.
WECOM_AIBOT_STREAM_WINDOW_SECONDS = env.float("WECOM_AIBOT_STREAM_WINDOW_SECONDS", default=330.0)
# Per-conversation order: a message waits while an earlier one of its conversation is in flight.
# The earlier one's run queues it as soon as it is done; meanwhile it re-checks after
# GATEWAY_ORDER_RETRY_DELAY_SECONDS, doubling up to GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS, and
# GATEWAY_ORDER_MAX_WAIT_SECONDS after its first re-check (by the clock) it is answered anyway.
# On the embedded pool a due re-check lets newer runs go first for at most the longest pause.
GATEWAY_ORDER_RETRY_DELAY_SECONDS = env.float("GATEWAY_ORDER_RETRY_DELAY_SECONDS", default=0.5)
GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS = env.float("GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS", default=10.0)
GATEWAY_ORDER_MAX_WAIT_SECONDS = env.float("GATEWAY_ORDER_MAX_WAIT_SECONDS", default=300.0)

# --- Logs, dashboards, metrics (apps.logs) ---------------------------------------------------
# Request-log rows are buffered (Redis list / process memory) and written in batches this often.
GATEWAY_LOG_FLUSH_SECONDS = env.float("GATEWAY_LOG_FLUSH_SECONDS", default=5.0)
GATEWAY_LOG_FLUSH_BATCH_ROWS = env.int("GATEWAY_LOG_FLUSH_BATCH_ROWS", default=1000)
GATEWAY_LOG_REDIS_TIMEOUT_SECONDS = env.float("GATEWAY_LOG_REDIS_TIMEOUT_SECONDS", default=0.5)
# How often each process appends its request-log rows to Redis (apps/logs/batching.py); rows
# held past the cap while Redis is unreachable are dropped.
GATEWAY_LOG_PUSH_SECONDS = env.float("GATEWAY_LOG_PUSH_SECONDS", default=0.25)
GATEWAY_LOG_PUSH_MAX_ROWS = env.int("GATEWAY_LOG_PUSH_MAX_ROWS", default=100_000)
# Daily rollups (dashboard charts) are rebuilt this often for the last GATEWAY_LOG_ROLLUP_DAYS days.
GATEWAY_LOG_ROLLUP_SECONDS = env.float("GATEWAY_LOG_ROLLUP_SECONDS", default=300.0)
GATEWAY_LOG_ROLLUP_DAYS = env.int("GATEWAY_LOG_ROLLUP_DAYS", default=2)
# A rebuild of today counts the rows created up to this long ago; the live overview reads the rest
# raw. The lag lets buffered request-log rows (flushed every GATEWAY_LOG_FLUSH_SECONDS) land first.
GATEWAY_LOG_ROLLUP_LAG_SECONDS = env.float("GATEWAY_LOG_ROLLUP_LAG_SECONDS", default=60.0)
# Raw LLM-call and request rows older than this are deleted (rollups are kept); audit rows live longer.
GATEWAY_LOG_RETENTION_DAYS = env.int("GATEWAY_LOG_RETENTION_DAYS", default=30)
GATEWAY_AUDIT_RETENTION_DAYS = env.int("GATEWAY_AUDIT_RETENTION_DAYS", default=365)
GATEWAY_LOG_PURGE_SECONDS = env.float("GATEWAY_LOG_PURGE_SECONDS", default=3600.0)
# GET /metrics requires "Authorization: Bearer <token>" with this token. Without one it is closed
# (403) unless DEBUG is on: set it, and give Prometheus the same value (see docs/security.md).
GATEWAY_METRICS_TOKEN = env.str("GATEWAY_METRICS_TOKEN", default="")
# A Celery worker serves its own metrics (Prometheus text, no token) on this port; 0: not served.
# Loopback by default: set the address to a private interface the scraper reaches.
GATEWAY_WORKER_METRICS_PORT = env.int("GATEWAY_WORKER_METRICS_PORT", default=0)
GATEWAY_WORKER_METRICS_ADDR = env.str("GATEWAY_WORKER_METRICS_ADDR", default="127.0.0.1")
CELERY_BEAT_SCHEDULE["logs.flush_request_logs"] = {
    "task": "logs.flush_request_logs", "schedule": GATEWAY_LOG_FLUSH_SECONDS,
}
CELERY_BEAT_SCHEDULE["logs.rollup_daily"] = {"task": "logs.rollup_daily", "schedule": GATEWAY_LOG_ROLLUP_SECONDS}
CELERY_BEAT_SCHEDULE["logs.purge_old_logs"] = {"task": "logs.purge_old_logs", "schedule": GATEWAY_LOG_PURGE_SECONDS}
CELERY_BEAT_SCHEDULE["quotas.send_budget_alerts"] = {"task": "quotas.send_budget_alerts",
                                                     "schedule": GATEWAY_BUDGET_ALERT_SEND_SECONDS}

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "apps.logs.structured.ContextFilter"}},
    "formatters": {"json": {"()": "apps.logs.structured.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # A Celery worker sets the root logger to its `-l` level; the gateway's own loggers and
        # Celery's per-task lines ("received", "succeeded") follow LOG_LEVEL in every process.
        **{name: {"level": LOG_LEVEL} for name in ("apps", "gateway_project", "celery.app.trace",
                                                    "celery.worker.strategy")},
    },
}
