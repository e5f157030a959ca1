from __future__ import annotations

from django import forms

from kb.guard.models import Topic


class TopicForm(forms.ModelForm):
    class Meta:
        model = Topic
        fields = ["name", "examples", "negatives", "response", "message", "contact", "active"]
        labels = {
            "examples": "Example questions (one per line)",
            "negatives": "Questions that are fine to answer (one per line)",
            "response": "Response",
            "message": "Message shown instead of an answer",
            "contact": "Whom to ask (for a topic handed to a person)",
        }
        widgets = {
            "examples": forms.Textarea(attrs={"rows": 8}),
            "negatives": forms.Textarea(attrs={"rows": 5}),
            "message": forms.Textarea(attrs={"rows": 2}),
        }

    def validate_unique(self) -> None:
        """Names are checked (case-insensitively) by the service, which says what to do."""
