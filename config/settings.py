"""Hookrelay settings: the only settings file, everything read from the environment."""

import os
import sys
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("HOOKRELAY_DATA_DIR", BASE_DIR / ".data"))
# prometheus-client reads this when it is first imported: every web and worker process writes its
# samples there and /metrics sums them.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(DATA_DIR / "metrics"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_schedule(name: str, default: str) -> list[int]:
    items = env_list(name, default)
    if not all(item.isdigit() for item in items):
        raise ImproperlyConfigured(f"{name} must be comma-separated whole seconds, not {items!r}")
    return [int(item) for item in items]


DEBUG = env_bool("DEBUG", False)
DATABASES = {"default": dj_database_url.parse(env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))}
USING_SQLITE = DATABASES["default"]["ENGINE"].endswith("sqlite3")
if USING_SQLITE:
    # Web, worker and beat share the file: wait for the write lock instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 600)
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # libpq waits forever by default: /healthz and workers should give up on a silent server.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and not USING_SQLITE:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is false and the database is not SQLite")
    SECRET_KEY = "django-insecure-hookrelay-development-key-do-not-use-in-production"
    if "pytest" not in sys.modules:
        warnings.warn("SECRET_KEY is not set: using the development key", stacklevel=1)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "oauth2_provider",
    "subscriptions",
    "deliveries",
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "webhooks.correlation.CorrelationIdMiddleware",
    "config.versioning.DeprecationMiddleware",
    "config.ratelimit.RateLimitMiddleware",
    "config.malformed.MalformedInputMiddleware",
    "config.browser.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "config.browser.AuthenticationMiddleware",
    "config.browser.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

ADMINS = [tuple(pair.split(":", 1)) for pair in env_list("ADMINS", "") if ":" in pair]
SERVER_EMAIL = env_str("SERVER_EMAIL", "hookrelay@localhost")
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(DATA_DIR / "mail"))
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)

# --- Webhooks (docs/configuration.md) ---
WEBHOOK_RETRY_SCHEDULE = env_schedule("WEBHOOK_RETRY_SCHEDULE", "60,300,900,3600,21600")
WEBHOOK_TIMEOUT = env_int("WEBHOOK_TIMEOUT", 15)
WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False)
WEBHOOK_DISABLE_AFTER = env_int("WEBHOOK_DISABLE_AFTER", 5)
WEBHOOK_BATCH_SIZE = env_int("WEBHOOK_BATCH_SIZE", 100)
# The hot statements (publish, claim, record) prepared once per connection; off behind a PgBouncer in
# transaction mode older than 1.21 (config/db.py).
WEBHOOK_PREPARED_STATEMENTS = env_bool("WEBHOOK_PREPARED_STATEMENTS", True)
WEBHOOK_SEND_CONCURRENCY = env_int("WEBHOOK_SEND_CONCURRENCY", 8)
WEBHOOK_SEND_THREADS = max(WEBHOOK_SEND_CONCURRENCY, env_int("WEBHOOK_SEND_THREADS", 64))
WEBHOOK_LEASE_MARGIN = env_int("WEBHOOK_LEASE_MARGIN", 30)
# True: a drain's commits wait for the disk too; a PostgreSQL crash then loses no attempt record (deliveries/worker.py).
WEBHOOK_WORKER_SYNCHRONOUS_COMMIT = env_bool("WEBHOOK_WORKER_SYNCHRONOUS_COMMIT", False)
WEBHOOK_EVENT_TYPES: dict[str, str] = {}
WEBHOOK_MODEL_EVENTS = {
    "auth.User": {"created": "user.created", "updated": "user.updated", "deleted": "user.deleted"},
}

# --- Celery (docs/architecture.md: the broker only wakes workers) ---
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport, but a reader never sees a message half written (deliveries/embedded_broker.py).
    CELERY_BROKER_TRANSPORT = "deliveries.embedded_broker:Transport"
    BROKER_DIR = DATA_DIR / "broker"
    BROKER_DIR.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR),
        "data_folder_out": str(BROKER_DIR),
        # Exchange tables: kombu's default is "control" under the working directory, the checkout.
        "control_folder": str(BROKER_DIR / "control"),
        "tmp_folder": str(BROKER_DIR / "tmp"),
        # kombu's default 1 s poll delivers about ten messages a second.
        "polling_interval": 0.05,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Two worker processes per core: a drain's main thread waits on PostgreSQL (claim, record, commit)
# about half of its time, and its sends wait while it does. With one process per core the drain
# benchmark left a quarter of the CPU idle; two per core used it. ``--concurrency`` overrides.
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2 * (os.cpu_count() or 1))
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
SWEEP_INTERVAL = 1.0 if min(WEBHOOK_RETRY_SCHEDULE, default=60) < 60 else 5.0
CELERY_BEAT_SCHEDULE = {
    "sweep-due-deliveries": {"task": "deliveries.tasks.sweep", "schedule": SWEEP_INTERVAL},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- REST API (docs/api.md) ---
API_SCOPES = {
    "subscriptions.read": "Read subscriptions and their secrets",
    "subscriptions.write": "Create, change, delete, rotate and ping subscriptions",
    "events.publish": "Publish events",
    "deliveries.read": "Read deliveries and their attempts",
    "deliveries.write": "Redeliver and recover deliveries",
}
OAUTH2_PROVIDER = {
    "SCOPES": API_SCOPES,
    "SCOPES_BACKEND_CLASS": "subscriptions.tenancy.ClientScopes",
    # Only the client credentials grant (RFC 6749 section 4.4): any other grant is unsupported_grant_type.
    "OAUTH2_SERVER_CLASS": "oauthlib.oauth2.BackendApplicationServer",
    "ACCESS_TOKEN_EXPIRE_SECONDS": 3600,
}
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth2_provider.IDToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth2_provider.Grant"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["subscriptions.tenancy.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["subscriptions.tenancy.HasScope"],
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer", "config.versioning.VendorJSONRenderer"],
    "DEFAULT_VERSIONING_CLASS": "rest_framework.versioning.AcceptHeaderVersioning",
    "DEFAULT_VERSION": "1",
    "ALLOWED_VERSIONS": ["1"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "config.schema.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "DATETIME_FORMAT": "iso-8601",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hookrelay API",
    "DESCRIPTION": "Register webhook endpoints, publish events and inspect deliveries.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["config.versioning.only_versioned_paths"],
    # Swagger UI served from our own static files: the docs work without a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Authorize fetches a token from /oauth/token/ (client credentials) and keeps it across reloads.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "persistAuthorization": True},
}
API_RATE_LIMIT = env_str("API_RATE_LIMIT", "1000/min")
API_RATE_LIMIT_ANON = env_str("API_RATE_LIMIT_ANON", "60/min")
# RFC 9745 Deprecation and RFC 8594 Sunset headers per API version, e.g. API_V1_SUNSET=2027-12-31T00:00:00Z
API_VERSIONS = ["1"]
API_DEPRECATIONS = {
    "1": {"deprecation": env_str("API_V1_DEPRECATION"), "sunset": env_str("API_V1_SUNSET")},
}
EVENT_MAX_BODY_BYTES = 256 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "config.logging.CorrelationIdFilter"}},
    "formatters": {
        "plain": {
            "class": "config.logging.Formatter",
            "format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s",
        },
        "json": {"()": "config.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["correlation"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "hookrelay": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "celery": {"level": "INFO"},
    },
}
