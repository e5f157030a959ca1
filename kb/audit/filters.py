"""The one set of filters the audit page, the export API and `manage.py audit_export` share."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django import forms

from kb.audit.models import EXCHANGE_OUTCOMES, AuditEvent, AuditEventQuerySet, AuditKind

FEEDBACK_CHOICES = (("up", "Helpful"), ("down", "Not helpful"), ("any", "Rated"), ("none", "Not rated"))
EXPORT_FORMATS = ("csv", "jsonl")


@dataclass(frozen=True)
class AuditFilters:
    since: dt.date | None = None
    until: dt.date | None = None  # inclusive: the whole day
    user: str = ""
    document: int | None = None
    model: str = ""
    outcome: str = ""
    feedback: str = ""
    kind: str = ""
    q: str = ""

    def as_dict(self) -> dict:
        """The filters that are set, as recorded in an export event and its manifest."""
        values = {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "user": self.user,
            "document": self.document,
            "model": self.model,
            "outcome": self.outcome,
            "feedback": self.feedback,
            "kind": self.kind,
            "q": self.q,
        }
        return {key: value for key, value in values.items() if value not in (None, "")}

    def as_query(self) -> dict[str, str]:
        return {key: str(value) for key, value in self.as_dict().items()}

    def apply(self, queryset: AuditEventQuerySet | None = None) -> AuditEventQuerySet:
        events = queryset if queryset is not None else AuditEvent.objects.all()
        events = events.between(
            since=_midnight(self.since) if self.since else None,
            until=_midnight(self.until + dt.timedelta(days=1)) if self.until and self.until < dt.date.max else None,
        )
        if self.kind:
            events = events.filter(kind=self.kind)
        if self.user:
            events = events.by_actor(self.user)
        if self.document is not None:
            events = events.touching_document(self.document)
        if self.outcome:
            events = events.with_outcome(self.outcome)
        if self.model:
            events = events.answered_by(self.model)
        if self.feedback:
            events = events.with_feedback(self.feedback)
        if self.q:
            events = events.mentioning(self.q)
        return events


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


class AuditFilterForm(forms.Form):
    since = forms.DateField(required=False, label="From", help_text="YYYY-MM-DD, UTC")
    until = forms.DateField(required=False, label="To", help_text="YYYY-MM-DD, UTC, inclusive")
    user = forms.CharField(required=False, max_length=150, label="User")
    document = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, label="Document id")
    model = forms.CharField(required=False, max_length=100, label="Model")
    outcome = forms.ChoiceField(required=False, choices=[("", "Any outcome"), *EXCHANGE_OUTCOMES], label="Outcome")
    feedback = forms.ChoiceField(required=False, choices=[("", "Any feedback"), *FEEDBACK_CHOICES], label="Feedback")
    kind = forms.ChoiceField(required=False, choices=[("", "Any event"), *AuditKind.choices], label="Event")
    q = forms.CharField(required=False, max_length=200, label="Question or answer contains")

    def clean(self):
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            raise forms.ValidationError("“From” is after “To”: swap the dates.")
        return cleaned

    def filters(self) -> AuditFilters:
        """The filters of a valid form."""
        data = self.cleaned_data or {}
        return AuditFilters(
            since=data.get("since"),
            until=data.get("until"),
            user=(data.get("user") or "").strip(),
            document=data.get("document"),
            model=(data.get("model") or "").strip(),
            outcome=data.get("outcome") or "",
            feedback=data.get("feedback") or "",
            kind=data.get("kind") or "",
            q=(data.get("q") or "").strip(),
        )

    def error_text(self) -> str:
        """Every error in one sentence per field, for the API and the command."""
        parts = []
        for field, errors in self.errors.items():
            label = "filters" if field == "__all__" else field
            parts.append(f"{label}: {' '.join(str(e) for e in errors)}")
        return "; ".join(parts)


def filters_from(params) -> tuple[AuditFilters | None, str]:
    """Filters from query parameters (or command options); (None, message) when one is malformed."""
    form = AuditFilterForm(params)
    if not form.is_valid():
        return None, form.error_text()
    return form.filters(), ""
