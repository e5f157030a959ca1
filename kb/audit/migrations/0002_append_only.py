"""The database itself refuses to change or remove audit events.

UPDATE is always refused; DELETE only inside a transaction in which the retention purge has set
`kb.audit_purge` to 'on' with set_config(..., is_local => true) (it records a purge event in that same
transaction). TRUNCATE is not covered: Django's test runner empties tables with it. In production, run
the application as a role that does not own the table (or revoke TRUNCATE) to close that door too.
"""

from django.db import migrations

CREATE = """
CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('kb.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: % of event % refused', TG_OP, OLD.seq
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Only the retention purge (manage.py audit_purge) removes audit events.';
END;
$$;
CREATE TRIGGER audit_event_append_only
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_event_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunSQL(CREATE, DROP)]
