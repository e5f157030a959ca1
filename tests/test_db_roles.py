"""Least privilege in the database: the owner migrates and purges; the application's role (kb_app, as `make run`
serves web, worker and beat) appends to the audit log but cannot change, remove or unprotect what it holds."""

from __future__ import annotations

import psycopg
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from ingest import services as ingest
from kb.audit import services as audit
from kb.audit.models import AuditEvent, AuditKind, ChainCheck
from kb.db import APP_ROLE, app_role_ensure, connected_as, url_as_role
from tests.factories import UserFactory

# Each is refused to the application's role with a permission error, whatever the rows.
REFUSED = {
    "update an event": "UPDATE audit_auditevent SET data = '{}'",
    "delete an event": "DELETE FROM audit_auditevent",
    "truncate the events": "TRUNCATE audit_auditevent",
    "update a chain check": "UPDATE audit_chaincheck SET ok = true",
    "delete a chain check": "DELETE FROM audit_chaincheck",
    "truncate the chain checks": "TRUNCATE audit_chaincheck",
    "disable the append-only trigger": "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only",
    "disable every trigger": "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
    "drop the trigger": "DROP TRIGGER audit_event_append_only ON audit_auditevent",
    "delete with the purge switch on": "SELECT set_config('kb.audit_purge', 'on', true); DELETE FROM audit_auditevent",
    "make itself superuser": f"ALTER ROLE {APP_ROLE} SUPERUSER",
}


@pytest.fixture(scope="session")
def app_role_url(test_database_url, django_db_blocker) -> str:
    """The test database's URL for the application role, created and granted as `make run` does."""
    with django_db_blocker.unblock():
        app_role_ensure()
    return url_as_role(test_database_url, APP_ROLE)


@pytest.mark.django_db(transaction=True)
def test_the_application_role_appends_but_cannot_change_the_audit_log(app_role_url):
    with connected_as(app_role_url):
        recorded = [
            audit.audit_record(kind=AuditKind.FEEDBACK, data={"exchange_id": n, "rating": "up"}) for n in (1, 2)
        ]
        assert audit.chain_verify().ok  # writes its chain-check row
    assert ChainCheck.objects.count() == 1
    held = list(AuditEvent.objects.order_by("seq").values_list("seq", "hash"))
    assert [seq for seq, _ in held[-2:]] == [e.seq for e in recorded]
    with psycopg.connect(app_role_url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (APP_ROLE,)
        for what, sql in REFUSED.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                for statement in sql.split("; "):
                    conn.execute(statement)
                pytest.fail(f"the application role could {what}")
            conn.rollback()
    # Nothing changed or went (the log as it was, whatever an earlier test left in it).
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", "hash")) == held
    assert audit.chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_the_app_works_as_its_role_and_the_purge_as_the_owner(app_role_url, test_database_url, settings, monkeypatch):
    from kb.answers import services as answers
    from kb.celery import app as celery_app

    settings.KB_MODELS = ["extractive"]
    # The processing task runs here, as the application's role: the session's Celery worker (started by earlier
    # tests, running as the owner) must not take it and race this test's own processing.
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    with connected_as(app_role_url):
        admin = UserFactory(roles=["Knowledge admin"])
        employee = UserFactory(roles=["Employee"])
        upload = SimpleUploadedFile(
            "parking.md", b"# Parking\n\nStaff park in the P2 garage; the barrier code is 4711."
        )
        result = ingest.document_upload(source=upload, filename="parking.md", uploaded_by=admin)
        ingest.document_process(result.document.pk)
        answer = answers.ask("Where do staff park?", employee)
        assert not answer["refused"] and "P2 garage" in answer["answer"], answer
        kinds = list(AuditEvent.objects.order_by("seq").values_list("kind", flat=True))
        assert kinds[-2:] == [AuditKind.DOCUMENT_UPLOAD, AuditKind.EXCHANGE]

        # Retention removes events only as the owner: the application's role is refused, the command switches.
        settings.KB_AUDIT_RETENTION_DAYS = 0
        with pytest.raises(Exception, match="permission denied"):
            audit.audit_purge()
        settings.KB_DATABASE_OWNER_URL = test_database_url
        call_command("audit_purge")
    (purge,) = AuditEvent.objects.all()
    assert purge.kind == AuditKind.PURGE and audit.chain_verify().ok
