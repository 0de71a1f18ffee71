"""Attune settings: one module, typed environment helpers.

Two run modes share this file:

* **embedded** (default): SQLite in WAL mode, Celery over the in-process ``memory://`` broker with a
  thread-pool worker started inside the ``attune run`` process, the in-memory channel layer.
* **production**: chosen when ``ATTUNE_DATABASE_URL`` and ``ATTUNE_REDIS_URL`` are both set:
  PostgreSQL, Redis as Celery broker / result store / channel layer.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:  # a clear message beats a stack trace at import time
        raise RuntimeError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- where state lives -------------------------------------------------------------------------
ATTUNE_HOME = Path(env_str("ATTUNE_HOME", str(BASE_DIR / "var"))).resolve()
ATTUNE_HOME.mkdir(parents=True, exist_ok=True)
ATTUNE_PACKS_PATHS = [BASE_DIR / "packs", ATTUNE_HOME / "packs"]
ATTUNE_PORT = env_int("ATTUNE_PORT", 8000)
ATTUNE_API_URL = env_str("ATTUNE_API_URL", f"http://127.0.0.1:{ATTUNE_PORT}/api/v1")

# --- run mode ------------------------------------------------------------------------------------
ATTUNE_DATABASE_URL = env_str("ATTUNE_DATABASE_URL")
ATTUNE_REDIS_URL = env_str("ATTUNE_REDIS_URL")
if bool(ATTUNE_DATABASE_URL) != bool(ATTUNE_REDIS_URL):
    raise RuntimeError(
        "production mode needs both ATTUNE_DATABASE_URL and ATTUNE_REDIS_URL; "
        "set both, or neither for embedded mode"
    )
ATTUNE_MODE = "production" if ATTUNE_DATABASE_URL else "embedded"
EMBEDDED = ATTUNE_MODE == "embedded"


def _secret_key() -> str:
    """SECRET_KEY from the environment, else a random one kept under ATTUNE_HOME."""
    key = env_str("ATTUNE_SECRET_KEY")
    if key:
        return key
    path = ATTUNE_HOME / "secret_key"
    if not path.exists():
        import secrets

        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("ATTUNE_DEBUG", False)
ALLOWED_HOSTS = env_list("ATTUNE_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("ATTUNE_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    # Attune, lowest layer first
    "apps.core",
    "apps.accounts",
    "apps.packs",
    "apps.keys",
    "apps.actions",
    "apps.executions",
    "apps.triggers",
    "apps.rules",
    "apps.workflows",
    "apps.inquiries",
    "apps.notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "attune.urls"
WSGI_APPLICATION = "attune.wsgi.application"
ASGI_APPLICATION = "attune.asgi.application"

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

# --- database ------------------------------------------------------------------------------------
if EMBEDDED:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("ATTUNE_SQLITE_PATH", str(ATTUNE_HOME / "attune.sqlite3")),
            "OPTIONS": {
                # WAL lets readers run beside the writer; IMMEDIATE takes the write lock up front so
                # two writers queue on the busy timeout instead of failing with "database is locked".
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            "CONN_MAX_AGE": 600,  # keep each thread's connection (and its PRAGMAs) instead of reopening
            # One file per test process, so parallel runs never share a test database.
            "TEST": {"NAME": str(ATTUNE_HOME / f"test-{os.getpid()}.sqlite3")},
        }
    }
else:
    DATABASES = {"default": dj_database_url.parse(ATTUNE_DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
    # The ASGI web process borrows connections from a pool of at most this many (attune/asgi.py).
    ATTUNE_WEB_DB_POOL_SIZE = env_int("ATTUNE_WEB_DB_POOL_SIZE", 20)
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend; a connection that ended its last request or task cleanly under a second ago is
        # not probed again (attune/db/postgresql/base.py).
        DATABASES["default"]["ENGINE"] = "attune.db.postgresql"

# Threads the ASGI server (``attune run``, uvicorn in production) runs Django's request handling on
# (attune/asgi.py): at most this many API requests are handled at once per process, the rest wait their turn.
ATTUNE_WEB_THREADS = env_int("ATTUNE_WEB_THREADS", 16)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = ATTUNE_HOME / "static"
LOGIN_URL = "/admin/login/"

# --- REST API ------------------------------------------------------------------------------------
ATTUNE_ALLOW_REGISTRATION = env_bool("ATTUNE_ALLOW_REGISTRATION", False)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.JWTAuthentication",
        "apps.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["apps.accounts.permissions.AttunePermission"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "apps.core.api.errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"login": env_str("ATTUNE_LOGIN_THROTTLE", "20/min")},
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("ATTUNE_JWT_ACCESS_MINUTES", 60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env_int("ATTUNE_JWT_REFRESH_DAYS", 7)),
    "UPDATE_LAST_LOGIN": True,
    "AUTH_HEADER_TYPES": ("Bearer",),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Attune API",
    "DESCRIPTION": "Event-driven automation: packs, actions, rules, workflows, executions.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "ExecutionStatusEnum": "apps.core.statuses.ExecutionStatus",
        "WorkerStateEnum": "apps.executions.models.Worker.State",
        "SensorStateEnum": "apps.triggers.models.SensorState",
    },
}

# --- Celery --------------------------------------------------------------------------------------
# Celery is transport; the database is the truth. Results of actions live in rows, not in Celery.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("ATTUNE_WORKER_PREFETCH", 4)
# Task events (task-received/started/succeeded, for Flower) cost the worker a Redis publish per task state.
# Off by default: Flower turns them on in the workers it watches (its --enable_events, on by default).
ATTUNE_WORKER_EVENTS = env_bool("ATTUNE_WORKER_EVENTS", False)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "attune"
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fix-up closes the database connection around every task unless told otherwise, so every
# execution would open a new PostgreSQL session (19 ms of server CPU each). Connections are reused for 1,000
# tasks; a task that leaves a transaction open gets its connection rolled back and closed (attune/celery.py).
# ATTUNE_DB_REUSE_MAX=0 restores close-after-every-task.
CELERY_DB_REUSE_MAX = env_int("ATTUNE_DB_REUSE_MAX", 1000) or None
if EMBEDDED:
    CELERY_BROKER_URL = "memory://localhost/"
    # The memory transport polls once a second by default: 5 ms keeps an in-process hop cheap.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 0.005}
    CELERY_RESULT_BACKEND = "cache+memory://"
else:
    CELERY_BROKER_URL = ATTUNE_REDIS_URL
    # A message not acked within the visibility timeout is redelivered: keep it above the longest task.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("ATTUNE_VISIBILITY_TIMEOUT", 7200)}
    CELERY_RESULT_BACKEND = ATTUNE_REDIS_URL
ATTUNE_WORKER_CONCURRENCY = env_int("ATTUNE_WORKER_CONCURRENCY", 8)
# Queues by task family, so long shell actions cannot starve orchestration. Embedded workers consume all.
ATTUNE_QUEUES = ["attune", "orchestration", "actions.inprocess", "actions.shell", "actions.python", "actions.node"]
ATTUNE_WORKER_HEARTBEAT_SECONDS = float(env_str("ATTUNE_WORKER_HEARTBEAT_SECONDS", "5"))
ATTUNE_WORKER_STALE_SECONDS = float(env_str("ATTUNE_WORKER_STALE_SECONDS", "30"))
ATTUNE_SCHEDULER_TICK_SECONDS = float(env_str("ATTUNE_SCHEDULER_TICK_SECONDS", "1.0"))
# Action processes.
ATTUNE_OUTPUT_MAX_BYTES = env_int("ATTUNE_OUTPUT_MAX_BYTES", 10 * 1024 * 1024)  # per stream
ATTUNE_OUTPUT_FLUSH_SECONDS = float(env_str("ATTUNE_OUTPUT_FLUSH_SECONDS", "0.5"))
ATTUNE_KILL_GRACE_SECONDS = float(env_str("ATTUNE_KILL_GRACE_SECONDS", "5"))
# A `scheduled` execution no worker claimed for this long is dispatched again (a lost message).
ATTUNE_REQUEUE_SECONDS = env_int("ATTUNE_REQUEUE_SECONDS", 120)
# A worker runs the next execution of a sequence (chain task, with-items item) on the same queue itself,
# up to this many in a row / for this long, instead of a broker round trip (apps/executions/inline.py).
ATTUNE_INLINE_MAX_RUNS = env_int("ATTUNE_INLINE_MAX_RUNS", 500)
ATTUNE_INLINE_MAX_SECONDS = float(env_str("ATTUNE_INLINE_MAX_SECONDS", "2"))
# An event still unmatched this long after it arrived is dispatched to matching again.
ATTUNE_EVENT_REDISPATCH_SECONDS = env_int("ATTUNE_EVENT_REDISPATCH_SECONDS", 300)

ATTUNE_WEBHOOK_MAX_PAYLOAD_BYTES = env_int("ATTUNE_WEBHOOK_MAX_PAYLOAD_BYTES", 1024 * 1024)
# Sensors (supervised by the scheduler process).
ATTUNE_SENSORS_ENABLED = env_bool("ATTUNE_SENSORS_ENABLED", True)
ATTUNE_SENSOR_LEASE_SECONDS = float(env_str("ATTUNE_SENSOR_LEASE_SECONDS", "30"))
ATTUNE_SENSOR_RECONCILE_SECONDS = float(env_str("ATTUNE_SENSOR_RECONCILE_SECONDS", "1"))
ATTUNE_SENSOR_BACKOFF_INITIAL_SECONDS = float(env_str("ATTUNE_SENSOR_BACKOFF_INITIAL_SECONDS", "1"))
ATTUNE_SENSOR_BACKOFF_MAX_SECONDS = float(env_str("ATTUNE_SENSOR_BACKOFF_MAX_SECONDS", "60"))
ATTUNE_SENSOR_BACKOFF_RESET_SECONDS = float(env_str("ATTUNE_SENSOR_BACKOFF_RESET_SECONDS", "60"))

# --- cache (login throttling, webhook rate limits): shared by every process in production ---------
if EMBEDDED:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": ATTUNE_REDIS_URL,
                          "KEY_PREFIX": env_str("ATTUNE_CHANNEL_PREFIX", "attune")}}

# --- Channels ------------------------------------------------------------------------------------
if EMBEDDED:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [ATTUNE_REDIS_URL], "prefix": env_str("ATTUNE_CHANNEL_PREFIX", "attune")},
        }
    }

# --- secrets at rest -----------------------------------------------------------------------------
# "1:<base64 32 bytes>,2:<base64 32 bytes>" — the highest version encrypts, all versions decrypt.
ATTUNE_ENCRYPTION_KEYS = env_str("ATTUNE_ENCRYPTION_KEYS")
ATTUNE_ENCRYPTION_KEY_FILE = ATTUNE_HOME / "encryption_keys"

# --- logging -------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("ATTUNE_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
    },
}
