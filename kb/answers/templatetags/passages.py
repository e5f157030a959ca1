"""`{{ chunk.text|passage_html }}`: a passage with its tables as tables, sanitized (kb/answers/rendering.py)."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from kb.answers.rendering import passage_html as render_passage

register = template.Library()


@register.filter
def passage_html(text: str) -> SafeString:
    return mark_safe(render_passage(text or ""))  # noqa: S308 - sanitized by nh3 in render_passage
