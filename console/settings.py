"""Baton's one settings module, driven by the environment (see the README's table).

Two shapes, one code path:
- embedded (no DATABASE_URL): SQLite, in-memory broker, cache and channel layer, so one
  process serves the whole console;
- scale-out (DATABASE_URL and REDIS_URL): Postgres is the truth, Redis carries the Celery
  broker, the channel layer and the shared cache (rate limits).
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from console.env import env_bool, env_float, env_int, env_list, env_str
from console.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("BATON_DATA_DIR", str(BASE_DIR / "var")))

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
EMBEDDED = not DATABASE_URL

DEBUG = env_bool("DEBUG", False)
# Plain HTTP is only for a console on this machine (the embedded default, make run, the
# tests); anything reachable by others runs behind TLS with secure cookies and HSTS.
HTTPS = env_bool("BATON_HTTPS", not EMBEDDED)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if HTTPS:
        raise ImproperlyConfigured("SECRET_KEY must be set in the environment (BATON_HTTPS=true)")
    # A console on this machine only: keep a generated key beside the data, never in the repo.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "console.apps.BatonAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "guardian",
    "axes",
    "csp",
    "channels",
    # Request, response and process figures for /metrics (console.telemetry adds Baton's).
    "django_prometheus",
    # django-ninja: the API's docs page (Swagger UI) from its own static files, no CDN.
    "ninja",
    "console",
    "agents",
    "approvals",
    "audit",
]

MIDDLEWARE = [
    # First: /healthz, /readyz and /metrics answer without host check, HTTPS redirect,
    # session or sign-in (console.health), and are not counted as requests.
    "console.health.ProbeMiddleware",
    "console.logs.RequestIdMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, so it can turn the response of any page that checked a password into the
    # lock-out page (console.security).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
WSGI_APPLICATION = None

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
                "console.context.console",
            ],
        },
    },
]

DATABASES: dict[str, dict[str, Any]]
if EMBEDDED:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "baton.sqlite3"),
            "OPTIONS": {
                # Web threads and worker threads write to the same file: WAL lets readers
                # run beside the writer, IMMEDIATE takes the write lock up front so two
                # writers queue instead of failing half-way, and the timeout is the queue.
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
        }
    }
else:
    DATABASES = {"default": dict(dj_database_url.parse(DATABASE_URL))}
    postgres = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    if postgres and env_bool("BATON_DB_POOL", False):
        # Under ASGI every request runs in a thread of its own, so persistent connections
        # would be opened anew per request; a process-wide pool keeps them. console/asgi.py
        # turns it on for the web process; workers keep per-thread persistent connections
        # (a pool must not cross the fork of a prefork worker).
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DB_POOL_MIN", 2),
            "max_size": env_int("DB_POOL_MAX", 20),
            "timeout": env_float("DB_POOL_TIMEOUT", 10.0),
        }
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 60)
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out person before their password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous grants, ever
GUARDIAN_RAISE_403 = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves straight from static/ (finders), so no collectstatic step stands between
# a clone and a console; set STATIC_ROOT to serve a collected, compressed copy instead.
STATIC_ROOT = env_str("STATIC_ROOT") or None
WHITENOISE_USE_FINDERS = STATIC_ROOT is None
WHITENOISE_AUTOREFRESH = DEBUG

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            # The shared cache (rate limits) may live on a Redis of its own.
            "LOCATION": env_str("BATON_CACHE_URL", REDIS_URL),
            "KEY_PREFIX": env_str("BATON_CACHE_PREFIX", "baton"),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "baton:ws"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery: the reliability settings of DESIGN section 4 -------------------------------
# The broker may live on a Redis of its own (BATON_BROKER_URL).
CELERY_BROKER_URL = env_str("BATON_BROKER_URL", REDIS_URL) or "memory://"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = env_str("BATON_TASK_QUEUE", "baton")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A broker restart must not end a worker: reconnect for as long as it takes (the default
# gives up after 100 tries), and on Redis use kombu's transport made safe to outlive its
# connection (console/broker.py: kombu raised 'NoneType' object has no attribute
# 'hostname' restoring unacked messages and the worker died).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "console.broker:Transport"
# Time limits stay below the broker's visibility timeout, so a message is never handed to
# a second worker while the first is still legitimately working on it.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("BATON_TASK_SOFT_TIME_LIMIT", 240)
CELERY_TASK_TIME_LIMIT = env_int("BATON_TASK_TIME_LIMIT", 300)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("BATON_VISIBILITY_TIMEOUT", 3600),
    # The in-memory broker polls; keep it brisk so the embedded console feels live.
    "polling_interval": 0.05,
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- Baton ----------------------------------------------------------------------------
# Modules that register tools and agent programs on import (the demo, or a deployment's own).
BATON_AGENT_MODULES = env_list("BATON_AGENT_MODULES", ["agents.demo"])
# How long a worker owns a run without renewing its lease; a dead worker's run is
# re-enqueued by the sweep after this.
BATON_RUN_LEASE_SECONDS = env_float("BATON_RUN_LEASE_SECONDS", 60.0)
# How long a queued run may sit unclaimed before the sweep enqueues it again.
BATON_REQUEUE_AFTER_SECONDS = env_float("BATON_REQUEUE_AFTER_SECONDS", 30.0)
# A run's input, as JSON (UTF-8): kept in the run, its audit event and every replay.
BATON_RUN_INPUT_MAX_BYTES = env_int("BATON_RUN_INPUT_MAX_BYTES", 65536)
BATON_SWEEP_EVERY_SECONDS = env_float("BATON_SWEEP_EVERY_SECONDS", 5.0)
# How often a live socket reloads its person and their permissions: a removed role, a
# deactivated person or an ended session stops their frames within this time.
BATON_LIVE_RECHECK_SECONDS = env_float("BATON_LIVE_RECHECK_SECONDS", 20.0)
# How often each worker process says it is alive; three missed beats and it is shown gone.
BATON_HEARTBEAT_SECONDS = env_float("BATON_HEARTBEAT_SECONDS", 5.0)
# How often the alert rules are measured (agents.alerts): a circuit breaker pauses its
# agent within one such period of the threshold being crossed.
BATON_ALERT_EVALUATE_SECONDS = env_float("BATON_ALERT_EVALUATE_SECONDS", 30.0)
# How often the KPI rollup (agents.rollup) adds the hours that closed since, and how long
# one round may go on catching up (the rest is the next round's).
BATON_KPI_ROLLUP_EVERY_SECONDS = env_float("BATON_KPI_ROLLUP_EVERY_SECONDS", 300.0)
BATON_KPI_ROLLUP_SECONDS = env_float("BATON_KPI_ROLLUP_SECONDS", 60.0)
BATON_DEMO_WORKLOAD = env_bool("BATON_DEMO_WORKLOAD", False)
BATON_DEMO_EVERY_SECONDS = env_float("BATON_DEMO_EVERY_SECONDS", 4.0)

# --- MCP gateway (agents.mcp) -----------------------------------------------------------
# The executables an admin may register as stdio upstream MCP servers: Baton starts them,
# so only what the operator lists here (empty: stdio servers are off; URLs always work).
BATON_MCP_STDIO_COMMANDS = env_list("BATON_MCP_STDIO_COMMANDS")
# How long a tools/call held for approval waits for the decision before answering
# "pending approval" (the client then calls again); keep it under the clients' timeout.
BATON_MCP_HOLD_WAIT_SECONDS = env_float("BATON_MCP_HOLD_WAIT_SECONDS", 25.0)
# A long poll or a held MCP call waits for the run's doorbell (agents.stepwait), and reads
# the step again this often without one: a doorbell lost on its way costs at most this.
BATON_STEP_RECHECK_SECONDS = env_float("BATON_STEP_RECHECK_SECONDS", 5.0)
# How long an upstream server's tool listing is reused before it is fetched again.
BATON_MCP_TOOLS_CACHE_SECONDS = env_float("BATON_MCP_TOOLS_CACHE_SECONDS", 30.0)
# How long one forwarded upstream call may take.
BATON_MCP_UPSTREAM_TIMEOUT_SECONDS = env_float("BATON_MCP_UPSTREAM_TIMEOUT_SECONDS", 60.0)

# --- Notifications --------------------------------------------------------------------
# Who is told when an approval is requested, escalated or expires: the deciders by e-mail,
# and every webhook, signed with HMAC-SHA256 (approvals/notifications.py).
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "console.mail.OneLineEmailBackend"  # who and what, in one log line each
    if EMBEDDED
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "baton@localhost")
BATON_BASE_URL = env_str("BATON_BASE_URL").rstrip("/")
BATON_WEBHOOK_URLS = env_list("BATON_WEBHOOK_URLS")
BATON_WEBHOOK_SECRET = env_str("BATON_WEBHOOK_SECRET")

# --- Security -------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the cookie-backed meta tag
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy (django-csp 4): scripts, styles and connections from this origin
# only. No inline script or style anywhere (the pages have none; htmx is told not to add
# its indicator <style> and not to evaluate code), so an injected one never runs.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],  # fetches and the live WebSocket (same origin)
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
if HTTPS:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# Sign-in throttling (django-axes, console/security.py): after BATON_LOGIN_FAILURE_LIMIT
# failed password checks for one username — at the login page or re-confirming a password
# for the global kill switch — that account is locked for BATON_LOGIN_COOLOFF_MINUTES, even
# with the right password. Locked by username, not by address: guesses spread over many
# addresses still count. Attempts during the lock do not extend it (an attacker cannot keep
# a person out for ever); a successful login clears the count. Lift a lock early with
# `manage.py axes_reset_username USERNAME`.
AXES_FAILURE_LIMIT = env_int("BATON_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("BATON_LOGIN_COOLOFF_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "console.security.lockout_response"
# The address recorded with a lock-out: the peer's, unless a proxy in front says otherwise.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
SILENCED_SYSTEM_CHECKS = [
    # axes.W006 asks to lock by address as well. Behind a proxy or an office's NAT one
    # address is everyone, so five wrong guesses would lock every person out; the lock is
    # per username, which rotating addresses, agents or cookies does not get around.
    "axes.W006",
]

# Plain lines for a terminal; BATON_LOG_JSON=true: one JSON object a line, with the
# request, run and agent ids bound where the work happens (console.logs).
BATON_LOG_JSON = env_bool("BATON_LOG_JSON", False)
LOGGING = logging_config(json_lines=BATON_LOG_JSON, level=env_str("LOG_LEVEL", "INFO"))

# --- Telemetry (console.telemetry, console.health) ------------------------------------
# /metrics is served to these addresses (CIDR, comma-separated), or to anyone presenting
# `Authorization: Bearer <BATON_METRICS_TOKEN>` when it is set; to others it is a 404.
BATON_METRICS_ALLOW = env_list("BATON_METRICS_ALLOW", ["127.0.0.1/32", "::1/128"])
try:
    BATON_METRICS_NETWORKS = [ipaddress.ip_network(n, strict=False) for n in BATON_METRICS_ALLOW]
except ValueError as exc:
    raise ImproperlyConfigured(f"BATON_METRICS_ALLOW: {exc}") from None
BATON_METRICS_TOKEN = env_str("BATON_METRICS_TOKEN")
# The journal's steps are counted over this recent window (baton_actions_recent).
BATON_METRICS_WINDOW_SECONDS = env_float("BATON_METRICS_WINDOW_SECONDS", 300.0)

# --- Audit trail (DESIGN section 7) -----------------------------------------------------
# The Ed25519 key that signs checkpoints of the chain head: a PEM file (or the PEM itself
# in BATON_AUDIT_SIGNING_KEY), never in the repository. A console on this machine only
# generates one beside its data; production without one signs nothing and says so
# (`check --deploy`, the integrity badge). `manage.py audit_keygen` writes a new key.
BATON_AUDIT_SIGNING_KEY = env_str("BATON_AUDIT_SIGNING_KEY")
BATON_AUDIT_SIGNING_KEY_FILE = env_str(
    "BATON_AUDIT_SIGNING_KEY_FILE", "" if HTTPS else str(DATA_DIR / "audit_signing_key.pem")
)
# Public keys of earlier signing keys (a PEM bundle), so checkpoints survive a rotation.
BATON_AUDIT_TRUSTED_KEYS_FILE = env_str("BATON_AUDIT_TRUSTED_KEYS_FILE")
# Every checkpoint is also appended here, outside the database; ship it elsewhere.
BATON_AUDIT_CHECKPOINT_DIR = env_str("BATON_AUDIT_CHECKPOINT_DIR", str(DATA_DIR / "checkpoints"))
BATON_AUDIT_CHECKPOINT_EVERY_SECONDS = env_float("BATON_AUDIT_CHECKPOINT_EVERY_SECONDS", 300.0)
BATON_AUDIT_VERIFY_EVERY_SECONDS = env_float("BATON_AUDIT_VERIFY_EVERY_SECONDS", 900.0)
# Who chains audit events (audit.sequencer): "sequencer" — writers queue them and one
# elected holder chains them in batches (Postgres; a candidate runs in every worker
# process) — or "inline": each writer chains its own in its transaction (the embedded
# console on SQLite, always; the test suite). How often the holder looks without a wake.
BATON_AUDIT_SEQUENCING = env_str("BATON_AUDIT_SEQUENCING", "inline" if EMBEDDED else "sequencer")
if BATON_AUDIT_SEQUENCING not in ("inline", "sequencer"):
    raise ImproperlyConfigured('BATON_AUDIT_SEQUENCING must be "inline" or "sequencer"')
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    BATON_AUDIT_SEQUENCING = "inline"
elif BATON_AUDIT_SEQUENCING == "inline":
    # baton_audit_append chains at once in sessions that say so (audit migration 0009).
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options["options"] = (_options.get("options", "") + " -c baton.audit_inline=on").strip()
BATON_AUDIT_SEQUENCER_POLL_SECONDS = env_float("BATON_AUDIT_SEQUENCER_POLL_SECONDS", 1.0)
# The audit page warns when a committed event has waited longer than this to be chained.
BATON_AUDIT_SEQUENCER_LATE_SECONDS = env_float("BATON_AUDIT_SEQUENCER_LATE_SECONDS", 5.0)
# The scheduled verification goes on from the last signed outcome (it reads only the new
# events); once this long after the last signed full run it walks the whole trail instead.
BATON_AUDIT_FULL_VERIFY_EVERY_SECONDS = env_float("BATON_AUDIT_FULL_VERIFY_EVERY_SECONDS", 86400.0)

# /readyz fails when beat's verification of the chain (a row every run) is older than this
# (0: not checked); three missed runs by default.
BATON_READY_BEAT_SECONDS = env_float(
    "BATON_READY_BEAT_SECONDS", 3 * BATON_AUDIT_VERIFY_EVERY_SECONDS
)

# --- Approver analytics (agents.approver_stats) ----------------------------------------
# An approval, unedited, of at least this amount given in less than this many seconds
# after the request was put before the approver counts as a rubber stamp.
BATON_RUBBER_STAMP_SECONDS = env_float("BATON_RUBBER_STAMP_SECONDS", 3.0)
BATON_RUBBER_STAMP_AMOUNT = env_float("BATON_RUBBER_STAMP_AMOUNT", 1000.0)
# Where a held action carries its amount: the first of these arguments holding a number
# (payments.pay's `amount`, purchasing.create_po's `total`).
BATON_AMOUNT_FIELDS = env_list("BATON_AMOUNT_FIELDS", ["amount", "total"])

# --- Timers (Celery beat) -------------------------------------------------------------
# Every periodic task, for every layout: `make run`'s beat thread, `celery beat` and
# `celery worker -B` all read this one schedule. It is built here, with the settings, so no
# start-up order can leave a timer out (it once held only the demo workload under make run).
BATON_APPROVAL_EXPIRY_EVERY_SECONDS = env_float("BATON_APPROVAL_EXPIRY_EVERY_SECONDS", 5.0)
BATON_DEMO_WORKLOAD_TIMER = {"task": "agents.demo_workload", "schedule": BATON_DEMO_EVERY_SECONDS}
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "sweep runs": {"task": "agents.sweep", "schedule": BATON_SWEEP_EVERY_SECONDS},
    "expire approvals": {
        "task": "approvals.expire",
        "schedule": BATON_APPROVAL_EXPIRY_EVERY_SECONDS,
    },
    "sign audit checkpoint": {
        "task": "audit.checkpoint",
        "schedule": BATON_AUDIT_CHECKPOINT_EVERY_SECONDS,
    },
    "verify audit chain": {"task": "audit.verify", "schedule": BATON_AUDIT_VERIFY_EVERY_SECONDS},
    "evaluate alert rules": {"task": "alerts.evaluate", "schedule": BATON_ALERT_EVALUATE_SECONDS},
    "roll up KPIs": {"task": "kpis.rollup", "schedule": BATON_KPI_ROLLUP_EVERY_SECONDS},
}
# The demo workload only where the demo agents are loaded (`make run` adds it itself).
if BATON_DEMO_WORKLOAD and "agents.demo" in BATON_AGENT_MODULES:
    CELERY_BEAT_SCHEDULE["demo workload"] = BATON_DEMO_WORKLOAD_TIMER
