"""Knowledge admin pages for the off-limits topics: list, add, edit, delete, load the shipped ones."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from kb.accounts.access import role_required
from kb.accounts.roles import Role
from kb.guard import services
from kb.guard.forms import TopicForm
from kb.guard.models import Topic
from kb.guard.topics import lines

manage_topics = role_required(Role.KNOWLEDGE_ADMIN)


def _save(request, form: TopicForm, topic: Topic | None):
    if not form.is_valid():
        return None
    try:
        if topic is None:
            return services.topic_create(actor=request.user, **form.cleaned_data)
        return services.topic_update(topic=topic, actor=request.user, **form.cleaned_data)
    except services.TopicError as error:
        form.add_error(None, str(error))
        return None


@manage_topics
def topic_list(request):
    form = TopicForm(request.POST or None, initial={"active": True})
    if request.method == "POST":
        topic = _save(request, form, None)
        if topic is not None:
            messages.success(request, f"“{topic.name}” is saved; questions on it are no longer answered by kb.")
            return redirect("topic_list")
    topics = [(topic, len(lines(topic.examples)), len(lines(topic.negatives))) for topic in Topic.objects.all()]
    return render(request, "guard/topic_list.html", {"topics": topics, "form": form})


@manage_topics
def topic_edit(request, topic_id: int):
    topic = get_object_or_404(Topic, pk=topic_id)
    form = TopicForm(request.POST or None, instance=topic if request.method != "POST" else None)
    if request.method == "POST":
        saved = _save(request, form, topic)
        if saved is not None:
            messages.success(request, f"“{saved.name}” is saved.")
            return redirect("topic_list")
    return render(request, "guard/topic_edit.html", {"topic": topic, "form": form})


@manage_topics
@require_POST
def topic_delete(request, topic_id: int):
    topic = get_object_or_404(Topic, pk=topic_id)
    name = topic.name
    services.topic_delete(topic=topic, actor=request.user)
    messages.success(request, f"“{name}” is deleted; kb answers questions on it again.")
    return redirect("topic_list")


@manage_topics
@require_POST
def topics_load_defaults(request):
    created = services.topics_load_defaults(actor=request.user)
    if created:
        messages.success(request, "Loaded: " + ", ".join(t.name for t in created) + ".")
    else:
        messages.info(request, "The shipped topics are here already.")
    return redirect("topic_list")
