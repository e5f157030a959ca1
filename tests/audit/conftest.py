"""Helpers for the audit tests: an empty log to start from, and tampering as someone with the database's
superuser rights would (the append-only trigger switched off for the statement)."""

from __future__ import annotations

import pytest
from django.db import connection

from kb.audit import services
from kb.audit.models import AuditEvent

TRIGGER = "audit_event_append_only"


@pytest.fixture
def empty_log(db):
    """Start from an empty chain (inside the test's transaction, so it comes back afterwards)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('kb.audit_purge', 'on', true)")
        cursor.execute("DELETE FROM audit_auditevent")
        cursor.execute("SELECT set_config('kb.audit_purge', 'off', true)")
        cursor.execute("DELETE FROM audit_chaincheck")
        cursor.execute("DELETE FROM audit_checkpoint")


def tamper(sql: str, params=()) -> None:
    """Run `sql` against the audit table with its trigger disabled, as a superuser could."""
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE audit_auditevent DISABLE TRIGGER {TRIGGER}")
        cursor.execute(sql, params)
        cursor.execute(f"ALTER TABLE audit_auditevent ENABLE TRIGGER {TRIGGER}")


def record_some(count: int, *, actor=None, kind: str = "feedback", **data) -> list[AuditEvent]:
    return [
        services.audit_record(kind=kind, actor=actor, data={"exchange_id": 1000 + n, "rating": "up", "n": n, **data})
        for n in range(count)
    ]
