"""Employee pages: ask (streamed with JavaScript, a plain form post without), conversations, the cited
passage panel, feedback, and a reading view of the documents an employee may read."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from ingest.models import Document
from kb.accounts.access import role_required
from kb.accounts.roles import Role, has_role, roles_of
from kb.answers import reading, rendering, services
from kb.answers.api import request_id_of
from kb.answers.models import Conversation, Exchange, Feedback, Outcome
from kb.guard.input import QUESTION_TOO_LONG
from kb.guard.topics import OFF_LIMITS
from kb.llm.providers import EXTRACTIVE

RECENT_CONVERSATIONS = 30


# Superusers hold every role (has_role goes through Django's permissions), so they may ask too.
_asker = role_required(Role.EMPLOYEE)


def _own_exchange(request, exchange_id: int) -> Exchange:
    # Someone else's exchange is "not found", not "forbidden": its existence is not for others to learn.
    return get_object_or_404(Exchange.objects.select_related("feedback"), pk=exchange_id, user=request.user)


def outcome_badge(exchange: Exchange) -> tuple[str, str] | None:
    """The one badge an answer shows (its kind and label), or None for a model's answer as asked. One per
    exchange: a blocked question is refused too, but it is "blocked", not also "not covered"."""
    outcome = exchange.outcome
    if outcome == Outcome.BLOCKED and exchange.refusal_reason == OFF_LIMITS:
        return "off-limits", "Off-limits topic: not answered by kb"
    if outcome == Outcome.BLOCKED:
        return "blocked", "Blocked"
    if outcome == Outcome.FAILED:
        # With attempts on record the chain ran and every link failed; otherwise the answer broke elsewhere.
        return "failed", "Model unavailable" if exchange.attempts else "Not answered"
    if outcome == Outcome.CANCELLED:
        return "cancelled", "Stopped before the answer"
    if outcome == Outcome.PENDING:
        return "pending", "Still being answered"
    if exchange.refused:
        return "refused", "Not covered by the documents"
    if outcome == Outcome.CACHED:
        return "cached", "Answered from cache"
    quoted = exchange.model == EXTRACTIVE
    if exchange.fallback_used:
        return "fallback", "Fallback: quoted, not written by a model" if quoted else f"Fallback: {exchange.model}"
    if quoted:
        return "extractive", "Quoted, not written by a model"
    return None


def _exchange_context(exchange: Exchange) -> dict:
    feedback = getattr(exchange, "feedback", None)
    nearest = exchange_nearest(exchange)
    details = title_details(exchange.user, [c["document_id"] for c in exchange.citations])
    return {
        "exchange": exchange,
        "badge": outcome_badge(exchange),
        "answer_html": rendering.answer_html(exchange.answer, exchange.citations, exchange.pk),
        "sources": [{**c, "detail": details.get(c["document_id"], "")} for c in exchange.citations],
        "nearest": nearest,
        "feedback": feedback,
        "reasons": Feedback.Reason.choices,
    }


def title_details(user, document_ids: list[int]) -> dict[int, str]:
    """For cited documents whose title another document the user may read also carries: what tells them apart."""
    if not document_ids:
        return {}
    return Document.objects.searchable().readable_by(user).same_title_details(document_ids)


def exchange_nearest(exchange: Exchange) -> list[dict]:
    """The nearest documents of a refused answer that the asker may still read."""
    if not exchange.refused:
        return []
    ids = []
    for passage in exchange.passages:
        if passage["document_id"] not in ids:
            ids.append(passage["document_id"])
    readable = Document.objects.searchable().readable_by(exchange.user).filter(pk__in=ids[:3])
    titles = dict(readable.values_list("pk", "title"))
    details = title_details(exchange.user, list(titles))
    return [{"document_id": pk, "title": titles[pk], "detail": details.get(pk, "")} for pk in ids[:3] if pk in titles]


@login_required
def home(request):
    if not has_role(request.user, Role.EMPLOYEE):
        return render(request, "answers/home.html", {"roles": roles_of(request.user)})
    return _ask_page(request, conversation=None)


@_asker
@require_GET
def conversation_detail(request, conversation_id: int):
    conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
    return _ask_page(request, conversation=conversation)


def _recent_conversations(user):
    return Conversation.objects.filter(user=user).order_by("-updated_at")[:RECENT_CONVERSATIONS]


def _ask_page(request, *, conversation: Conversation | None, asked: str = "", ask_error: str = "", status: int = 200):
    exchanges = []
    if conversation is not None:
        exchanges = [
            _exchange_context(exchange)
            for exchange in conversation.exchanges.select_related("feedback").order_by("created_at")
        ]
    limit = settings.KB_QUESTION_MAX_CHARS
    return render(
        request,
        "answers/ask.html",
        {
            "conversation": conversation,
            "exchanges": exchanges,
            "conversations": _recent_conversations(request.user),
            "question_max_chars": limit,
            "question_max_chars_shown": f"{limit:,}",
            # The page's counter fills in the length, as the length guard does on the server.
            "question_too_long": QUESTION_TOO_LONG.format(length="{length}", limit=f"{limit:,}"),
            "asked": asked,
            "ask_error": ask_error,
        },
        status=status,
    )


@_asker
@require_POST
def ask_submit(request):
    """The ask form without JavaScript: answer in full, then show the conversation at that answer. A question
    that cannot be asked comes back in the box with what to do (a long one is not lost)."""
    raw_conversation = request.POST.get("conversation_id") or None
    question = request.POST.get("question", "")
    try:
        conversation_id = int(raw_conversation) if raw_conversation else None
        result = services.ask(
            question, request.user, conversation_id=conversation_id, request_id=request_id_of(request)
        )
    except ValueError:
        raise Http404("No such conversation.") from None
    except services.AskError as error:
        if error.status == 404:
            messages.error(request, str(error))
            return redirect("home")
        conversation = None
        if conversation_id is not None:
            conversation = Conversation.objects.filter(pk=conversation_id, user=request.user).first()
        response = _ask_page(
            request, conversation=conversation, asked=question, ask_error=str(error), status=error.status
        )
        if error.retry_after_s:
            response["Retry-After"] = str(error.retry_after_s)
        return response
    url = reverse("conversation_detail", args=[result["conversation_id"]])
    return redirect(f"{url}#exchange-{result['exchange_id']}")


@_asker
@require_GET
def exchange_detail(request, exchange_id: int):
    """One answer, rendered (the page swaps it in when the stream is done); for the page's script also the
    conversation's heading and the sidebar, which the first answer of a new conversation changes."""
    exchange = _own_exchange(request, exchange_id)
    if not request.htmx:
        return render(request, "answers/ask.html#exchange", _exchange_context(exchange))
    context = {
        **_exchange_context(exchange),
        "conversation": exchange.conversation,
        "conversations": _recent_conversations(request.user),
    }
    return render(request, "answers/exchange_swap.html", context)


@_asker
@require_GET
def citation_panel(request, exchange_id: int, n: int):
    """The cited passage: document, section, page, the passage with the quoted sentence highlighted."""
    exchange = _own_exchange(request, exchange_id)
    citation = next((c for c in exchange.citations if c["n"] == n), None)
    if citation is None:
        raise Http404("No such source in this answer.")
    # Access may have changed since the answer: a document the user can no longer read is not shown.
    document = Document.objects.readable_by(request.user).filter(pk=citation["document_id"]).first()
    chunk = document.chunks.filter(pk=citation["chunk_id"]).first() if document else None
    context = {"exchange": exchange, "citation": citation, "document": document, "chunk": chunk}
    if document is not None:
        context["detail"] = title_details(request.user, [document.pk]).get(document.pk, "")
    if chunk is not None:
        before, quote, _ = reading.highlight(chunk.text, citation["quote"])
        # Sanitized by nh3 inside passage_html; the quote is marked cell by cell when it is a table row.
        context["passage"] = mark_safe(rendering.passage_html(chunk.text, (len(before), len(before) + len(quote))))  # noqa: S308
    return render(request, "answers/citation_panel.html", context)


@_asker
@require_POST
def feedback_submit(request, exchange_id: int):
    exchange = _own_exchange(request, exchange_id)
    try:
        services.feedback_give(
            exchange=exchange,
            user=request.user,
            rating=request.POST.get("rating", ""),
            reason=request.POST.get("reason", ""),
            comment=request.POST.get("comment", ""),
        )
        saved = True
        error = ""
    except services.AskError as exc:
        saved = False
        error = str(exc)
    if request.htmx:
        exchange.refresh_from_db()
        context = {**_exchange_context(_own_exchange(request, exchange_id)), "saved": saved, "error": error}
        return render(request, "answers/ask.html#feedback", context, status=200 if saved else 400)
    if saved:
        messages.success(request, "Thank you: your rating is recorded.")
    else:
        messages.error(request, error)
    url = reverse("conversation_detail", args=[exchange.conversation_id]) if exchange.conversation_id else "/"
    return redirect(f"{url}#exchange-{exchange.pk}")


@_asker
@require_GET
def document_read(request, document_id: int):
    """A document an employee may read, passage by passage, with anchors that citation links open."""
    document = get_object_or_404(Document.objects.searchable().readable_by(request.user), pk=document_id)
    chunks = document.chunks.order_by("ordinal").only(
        "id", "ordinal", "text", "heading_path", "page_start", "page_end", "char_start", "char_end"
    )
    return render(
        request, "answers/document_read.html", {"document": document, "passages": reading.reading_passages(chunks)}
    )
