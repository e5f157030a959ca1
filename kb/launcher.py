"""`make run`: prepare everything, then run web, worker and beat (Procfile) under honcho.

This process owns the embedded PostgreSQL when DATABASE_URL is unset: it starts it, hands its URL to
the children, and stops it after honcho has stopped them, so Ctrl-C leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kb.entry import fail_cleanly
from kb.env import EnvError, env_int

BASE_DIR = Path(__file__).resolve().parent.parent


def _say(message: str) -> None:
    print(f"kb: {message}", flush=True)


def prepare() -> dict[str, str]:
    """Set up the database, static files and first admin; return the environment for the children."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    started = time.monotonic()
    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from kb.accounts.services import first_admin_ensure
    from kb.audit.signing import SigningKeyError, signing_key_ensure
    from kb.db import (
        APP_ROLE,
        DatabaseUnreachable,
        PgvectorMissing,
        app_role_ensure,
        connected_as,
        pgvector_ensure_available,
        url_as_role,
    )
    from kb.search.embeddings import model_ensure_available

    try:
        key, created = signing_key_ensure()
    except SigningKeyError as exc:
        raise EnvError(str(exc)) from None
    _say(
        f"{'created the' if created else 'the'} audit signing key {key.path} (0600, outside the database; back it "
        f"up); public key for compliance: {key.public_b64} (id {key.key_id})"
    )
    model_ensure_available()
    try:
        pgvector_ensure_available()
    except (PgvectorMissing, DatabaseUnreachable) as exc:
        raise EnvError(str(exc)) from None
    # The owner migrates and grants; web, worker and beat run as the application's role, which may append to
    # the audit log but not change, delete, truncate or unprotect it (README, "Database roles").
    app_user = connection.settings_dict["USER"]
    with connected_as(settings.KB_DATABASE_OWNER_URL):
        call_command("migrate", interactive=False, verbosity=0)
        if settings.KB_EMBEDDED_DATABASE:
            app_role_ensure(APP_ROLE)
        elif settings.KB_DATABASE_OWNER_URL and connection.settings_dict["USER"] != app_user:
            app_role_ensure(app_user, create=False)  # an external server: its administrator created the role
        from kb.audit.services import checkpoint_adopt

        adopted = checkpoint_adopt()
    if adopted is not None:
        _say(f"signed the first audit checkpoint, of the existing log (#{adopted.first_seq}–#{adopted.last_seq})")
    call_command("collectstatic", interactive=False, verbosity=0)
    password_file = settings.KB_DATA_DIR / "admin-password.txt"
    if first_admin_ensure(password_file=password_file):
        _say(f"created the first admin account; its user name and password are in {password_file}")
    elif password_file.exists():
        _say(f"admin credentials (from the first start) are in {password_file}")
    from ingest.services import demo_corpus_ensure, documents_reindex_stale_embeddings

    demo_corpus_ensure(stdout=_say)
    stale = documents_reindex_stale_embeddings()
    if stale:
        _say(f"{stale} documents were embedded by another model; the worker re-embeds them in the background")
    _say(f"ready to serve after {time.monotonic() - started:.1f}s of preparation")

    env = dict(os.environ)
    if settings.KB_EMBEDDED_DATABASE:
        # The children join the server this process started (they must not each start one), as the
        # application's role; the worker purges old audit events as the owner.
        env["DATABASE_URL"] = url_as_role(settings.KB_EMBEDDED_DATABASE_URL, APP_ROLE)
        env["KB_DATABASE_OWNER_URL"] = settings.KB_EMBEDDED_DATABASE_URL
        env["KB_EMBEDDED_DATABASE"] = "1"
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this launcher dies without cleaning up (SIGKILL, crash), so that
    honcho, which has its own process group, then stops web, worker and beat instead of lingering."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the launcher's own shutdown path still stops honcho
        pass


PR_SET_PDEATHSIG = 1
# honcho SIGKILLs what has not stopped 5 s after its SIGTERM; the worker's warm shutdown (the main process
# stopping its two pool processes) takes ~7 s on 2 cores (tests/test_celery.py). Below the 30 s this
# launcher gives honcho as a whole.
HONCHO_KILL_WAIT_S = 20
HONCHO_WITH_KILL_WAIT = (
    "import sys, honcho.command, honcho.manager; "
    f"honcho.manager.KILL_WAIT = {HONCHO_KILL_WAIT_S}; sys.argv[0] = 'honcho'; honcho.command.main()"
)


def _stop(signum, frame):
    # SIGTERM is treated like Ctrl-C, so that the children are stopped and the embedded database's exit
    # hook runs. SIGINT gets the handler explicitly too: a shell that starts `make run` in the background
    # leaves SIGINT ignored, and Python then never raises KeyboardInterrupt.
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    port = fail_cleanly(lambda: env_int("PORT", 8000, minimum=1, maximum=65535))
    env = fail_cleanly(prepare)
    host = env.get("KB_HOST", "127.0.0.1")
    _say(f"serving on http://{host}:{port}/ (Ctrl-C stops web, worker, beat and the embedded database)")
    if host not in ("127.0.0.1", "localhost", "::1") and env.get("KB_HTTPS", "").lower() not in ("false", "0", "no"):
        # Secure cookies travel over plain HTTP to loopback only: sign-in from another machine would fail.
        _say(
            f"note: {host} is served over plain HTTP but session cookies are marked Secure (KB_HTTPS): browsers "
            "on other machines cannot sign in. Put TLS in front (the README's Scaling out), or set "
            "KB_HTTPS=false on a trusted network"
        )
    honcho = subprocess.Popen(  # noqa: S603 - our own interpreter and Procfile
        [
            sys.executable,
            "-c",
            HONCHO_WITH_KILL_WAIT,
            "-f",
            str(BASE_DIR / "Procfile"),
            "-d",
            str(BASE_DIR),
            "start",
            "-p",
            str(port),
        ],
        env={**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
        # Its own process group: Ctrl-C reaches only this process, which passes exactly one SIGINT on.
        # (A second one makes honcho SIGKILL the worker in the middle of a document.)
        start_new_session=True,
        preexec_fn=_die_with_parent,  # only sets a kernel flag in the child
    )
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        # Shutting down: further Ctrl-C or SIGTERM must not cut it short, or this process would exit and
        # stop the embedded database while web and worker are still finishing.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGINT)
        try:
            return honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            honcho.send_signal(signal.SIGTERM)
            return honcho.wait()
    finally:
        _say("stopped")


if __name__ == "__main__":
    sys.exit(main())
