"""Settings for the Colearn portal, driven entirely by environment variables.

With nothing set the portal runs on one machine with no servers: DEBUG on, SQLite in var/, the in-memory
channel layer and Celery over kombu's filesystem transport. `DATABASE_URL` switches to PostgreSQL,
`REDIS_URL` to Redis for both Channels and Celery. With DEBUG off, SECRET_KEY must be provided and the
secure defaults below make `manage.py check --deploy` clean.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.env import EnvError, env_bool, env_int, env_list, env_secret, env_str, parse_database_url

PLATFORM_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = PLATFORM_DIR.parent
VAR_DIR = Path(env_str("VAR_DIR", str(REPO_DIR / "var")))

DEBUG = env_bool("DEBUG", True)

_secret = env_secret("SECRET_KEY")
if not _secret:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off")
    _secret = "django-insecure-colearn-development-key-never-use-in-production"
SECRET_KEY = _secret

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "core",
    "accounts",
    "projects",
    "swarm",
    "live",
    "credit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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

# --- Database -------------------------------------------------------------------------------------------
_database_url = env_str("DATABASE_URL")
if _database_url:
    _default_db = parse_database_url(_database_url)
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _default_db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "db.sqlite3")}
    _default_db["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}  # writers wait, never "locked"
_default_db["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0)
if _default_db["ENGINE"].endswith("postgresql"):
    _default_db["CONN_HEALTH_CHECKS"] = True
    # Under Daphne every HTTP request runs its view in a thread of its own, so a persistent connection is
    # never reused: each request would open (and PostgreSQL fork) a new one. A pool keeps them (psycopg_pool);
    # Django then wants CONN_MAX_AGE 0 (a connection "closed" goes back to the pool).
    _pool_size = env_int("DB_POOL_MAX_SIZE", 0)
    if _pool_size > 0:
        _default_db.setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": _pool_size, "timeout": 10}
        _default_db["CONN_MAX_AGE"] = 0
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts -------------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "projects:list"
LOGOUT_REDIRECT_URL = "core:home"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- E-mail: console by default, SMTP when EMAIL_HOST is set ---------------------------------------------
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Colearn <noreply@colearn.localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Internationalisation -------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files: built by esbuild from frontend/ into platform/static_build/, served by WhiteNoise ----
STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(PLATFORM_DIR / "staticfiles")))
STATIC_BUILD_DIR = PLATFORM_DIR / "static_build"
if DEBUG:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing root at start-up
STATICFILES_DIRS = [STATIC_BUILD_DIR] if STATIC_BUILD_DIR.is_dir() else []
_manifest = env_bool("STATIC_MANIFEST", not DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if _manifest
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Security: strict unless DEBUG; each knob can be overridden (e.g. TLS terminated by a proxy) -------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

# --- Channels and Celery: in-process / filesystem by default, Redis when REDIS_URL is set ---------------
REDIS_URL = env_str("REDIS_URL")
CHANNELS_PREFIX = env_str("CHANNELS_PREFIX", "asgi")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout, as long as channels_redis blocks in BZPOPMIN.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}], "prefix": CHANNELS_PREFIX},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_DATA_DIR = Path(env_str("CELERY_DATA_DIR", str(VAR_DIR / "celery")))
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
else:
    # kombu's filesystem transport: producer and worker exchange messages as files, no server needed.
    for _sub in ("queue", "processed", "control", "results"):
        (CELERY_DATA_DIR / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_DATA_DIR / "queue"),
        "data_folder_out": str(CELERY_DATA_DIR / "queue"),
        "processed_folder": str(CELERY_DATA_DIR / "processed"),
        "control_folder": str(CELERY_DATA_DIR / "control"),
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = f"file://{CELERY_DATA_DIR / 'results'}"
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "celery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TIMEZONE = TIME_ZONE
# Absolute: `celery --workdir platform` changes directory before beat opens it (relative broke the demo).
CELERY_BEAT_SCHEDULE_FILENAME = str(
    Path(env_str("CELERY_BEAT_SCHEDULE_FILE", str(VAR_DIR / "celerybeat-schedule"))).absolute()
)
CELERY_BEAT_SCHEDULE = {
    "retry-welcome-emails": {
        "task": "accounts.tasks.retry_welcome_emails",
        "schedule": env_int("WELCOME_RETRY_INTERVAL_S", 600),
    },
    "swarm-housekeeping": {
        "task": "swarm.tasks.swarm_housekeeping",
        "schedule": env_int("SWARM_ROLLUP_S", 60),
    },
    "credit-stats-export": {
        "task": "credit.tasks.credit_stats_export",
        "schedule": env_int("CREDIT_STATS_EXPORT_S", 86400),
    },
}

# --- Swarm: the portal's signing key, the agent wheel, node lifecycle thresholds (seconds) --------------
PORTAL_SIGNING_KEY = env_secret("PORTAL_SIGNING_KEY")  # hex Ed25519 seed, or PORTAL_SIGNING_KEY_FILE
PORTAL_SIGNING_KEY_GENERATE = env_bool("PORTAL_SIGNING_KEY_GENERATE", DEBUG)  # dev: var/portal_key, 0600
PORTAL_PUBLIC_URL = env_str("PORTAL_PUBLIC_URL")  # how agents reach the portal; default: the request's host
AGENT_WHEEL_DIR = Path(env_str("AGENT_WHEEL_DIR", str(VAR_DIR / "agent")))
#: Model exports uploaded by project owners' agents (`node-agent export --upload`).
EXPORTS_DIR = Path(env_str("EXPORTS_DIR", str(VAR_DIR / "exports")))

# Credit for verified work receipts (credit.services); the daily stats export lands in CREDIT_STATS_DIR.
CREDIT_STATS_DIR = Path(env_str("CREDIT_STATS_DIR", str(VAR_DIR / "stats")))
CREDIT = {
    # A receipt's minute may lie this far ahead of the portal clock, and end at most MAX_AGE_S before it
    # (servers keep receipts while the portal is unreachable).
    "CLOCK_SKEW_S": env_int("CREDIT_CLOCK_SKEW_S", 120),
    "MAX_AGE_S": env_int("CREDIT_MAX_AGE_S", 86400),
    # Expert samples (forward + backward) a trainer may grant per sample it reported training: k_best (4)
    # experts x forward and backward, x2 for evaluation forwards and retries.
    "SAMPLES_PER_TRAINER_SAMPLE": env_int("CREDIT_SAMPLES_PER_TRAINER_SAMPLE", 16),
    # No trainer (other than the project owner's) may account for more than this share of a server's
    # credit, once that trainer granted the server SHARE_FLOOR_FLOPS.
    "MAX_TRAINER_SHARE": env_int("CREDIT_MAX_TRAINER_SHARE_PERCENT", 50) / 100,
    "SHARE_FLOOR_FLOPS": float(env_int("CREDIT_SHARE_FLOOR_GFLOPS", 1000)) * 1e9,
}

SWARM = {
    # Largest export an owner's agent may upload, and how many per project are kept (older files deleted).
    "EXPORT_MAX_BYTES": env_int("SWARM_EXPORT_MAX_BYTES", 512 * 2**20),
    "EXPORTS_KEPT": env_int("SWARM_EXPORTS_KEPT", 3),
    "JOIN_CODE_TTL": env_int("SWARM_JOIN_CODE_TTL_S", 900),
    # A code checked by the Join command (before its install) stays valid this long after the check, so a slow
    # PyTorch download does not lose it; at most this long past its first expiry, and still single-use.
    "JOIN_CODE_INSTALL_GRACE": env_int("SWARM_JOIN_CODE_INSTALL_GRACE_S", 3600),
    "CREDENTIAL_TTL": env_int("SWARM_CREDENTIAL_TTL_S", 86_400),
    "RENEW_GRACE": env_int("SWARM_RENEW_GRACE_S", 7 * 86_400),
    "HEARTBEAT_INTERVAL": env_int("SWARM_HEARTBEAT_INTERVAL_S", 10),
    "HEARTBEAT_BURST": env_int("SWARM_HEARTBEAT_BURST", 6),
    "ONLINE_WITHIN": env_int("SWARM_ONLINE_WITHIN_S", 30),
    "OFFLINE_AFTER": env_int("SWARM_OFFLINE_AFTER_S", 90),
    "OBSERVE_INTERVAL": env_int("SWARM_OBSERVE_INTERVAL_S", 10),
    # The observer's `info` probes of announced nodes (swarm.probe_schedule): how often a serving node is
    # probed again, the most a failing one waits (its wait doubles from PROBE_INTERVAL), how many probes run
    # at once and per round, the seconds one probe may take, and how many experts of a node it asks.
    "PROBE_INTERVAL": env_int("SWARM_PROBE_INTERVAL_S", 30),
    "PROBE_MAX_BACKOFF": env_int("SWARM_PROBE_MAX_BACKOFF_S", 600),
    "PROBE_CONCURRENCY": env_int("SWARM_PROBE_CONCURRENCY", 16),
    "PROBE_PER_ROUND": env_int("SWARM_PROBE_PER_ROUND", 64),
    "PROBE_TIMEOUT": env_int("SWARM_PROBE_TIMEOUT_S", 10),
    "PROBE_EXPERTS": env_int("SWARM_PROBE_EXPERTS", 8),
    "RAW_RETENTION": env_int("SWARM_RAW_RETENTION_S", 2 * 86_400),
    # Rate limits (requests per window, counted per portal process; 0 disables one):
    "RATE_AGENT_PER_IP": env_int("SWARM_RATE_AGENT_PER_IP", 6000),  # per minute, all agent endpoints
    "RATE_JOIN_PER_IP": env_int("SWARM_RATE_JOIN_PER_IP", 300),  # per 5 minutes
    "RATE_JOIN_PER_KEY": env_int("SWARM_RATE_JOIN_PER_KEY", 120),  # per 5 minutes (pending nodes poll)
    "RATE_RENEW_PER_KEY": env_int("SWARM_RATE_RENEW_PER_KEY", 30),  # per 5 minutes
    "RATE_EXPORT_FETCH_PER_KEY": env_int("SWARM_RATE_EXPORT_FETCH_PER_KEY", 6),  # per hour (takeovers)
    "RATE_JOIN_CODES_PER_USER": env_int("SWARM_RATE_JOIN_CODES_PER_USER", 30),  # per hour
}

# --- STUN/TURN for volunteers behind NATs (README: "STUN and TURN"). No public server by default: nothing
# leaves the volunteers' machines for a server the operator did not choose. TURN credentials are short-lived
# (coturn's REST scheme with the shared secret coturn's static-auth-secret holds) and go only to nodes.
ICE_STUN_URLS = env_list("COLEARN_STUN_URLS")  # e.g. stun:turn.example.org:3478
ICE_TURN_URLS = env_list("COLEARN_TURN_URLS")  # e.g. turn:turn.example.org:3478,turns:turn.example.org:5349
ICE_TURN_SECRET = env_secret("COLEARN_TURN_SECRET") or ""
ICE_TURN_TTL = env_int("COLEARN_TURN_TTL_S", 6 * 3600)
for _kind, _urls in (("stun", ICE_STUN_URLS), ("turn", ICE_TURN_URLS)):
    for _url in _urls:  # agents refuse a project config with a malformed URL: refuse it here, at start-up
        if not re.fullmatch(rf"{_kind}s?:[^\s@]{{1,250}}", _url):
            raise EnvError(f"COLEARN_{_kind.upper()}_URLS: {_url!r} is not a {_kind}:host:port URL")
if ICE_TURN_URLS and not ICE_TURN_SECRET:
    raise EnvError("COLEARN_TURN_URLS needs COLEARN_TURN_SECRET (coturn's static-auth-secret)")

# The largest expert grid a project may have (cells in all): what one swarm can serve and a page can show.
PROJECT_MAX_GRID_CELLS = env_int("PROJECT_MAX_GRID_CELLS", 65_536)

# --- Live swarm pages: WebSocket viewers per portal process (beyond: close 4503, the page retries) -------
LIVE_MAX_VIEWERS = env_int("LIVE_MAX_VIEWERS", 2000)

# --- Logging ----------------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
