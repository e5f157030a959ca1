"""The off-limits topics page: knowledge admins only; changes audited; output escaped."""

from __future__ import annotations

import pytest
from django.urls import reverse

from kb.audit.models import AuditEvent
from kb.guard.models import Topic

pytestmark = pytest.mark.django_db

EXAMPLES = "\n".join(
    [
        "what will my tax refund be this year?",
        "how do I fill in my personal tax return?",
        "can I deduct my home office from my income tax?",
        "should I file my taxes jointly with my wife?",
        "how much tax will I pay on my side business?",
        "is my rental income taxable?",
    ]
)


def _form(**overrides) -> dict:
    return {
        "name": "Personal tax advice",
        "examples": EXAMPLES,
        "negatives": "when is the payroll tax form sent out?",
        "response": "hand_to_person",
        "message": "kb does not give personal tax advice.",
        "contact": "the payroll team",
        "active": "on",
    } | overrides


@pytest.fixture(autouse=True)
def _no_topics_left_behind():
    """Each process caches the active topics for KB_TOPIC_REFRESH_S: none may outlive the test's database."""
    from kb.guard.services import forget_matcher

    forget_matcher()
    yield
    forget_matcher()


@pytest.fixture
def topic(knowledge_admin, client):
    client.force_login(knowledge_admin)
    client.post(reverse("topic_list"), _form())
    client.logout()
    return Topic.objects.get()


@pytest.mark.parametrize("who", ["employee", "compliance"])
def test_other_roles_get_403_on_every_topic_page(client, request, topic, who):
    client.force_login(request.getfixturevalue(who))
    pages = [
        ("get", reverse("topic_list")),
        ("post", reverse("topic_list")),
        ("get", reverse("topic_edit", args=[topic.pk])),
        ("post", reverse("topic_edit", args=[topic.pk])),
        ("post", reverse("topic_delete", args=[topic.pk])),
        ("post", reverse("topics_load_defaults")),
    ]
    for method, url in pages:
        assert getattr(client, method)(url).status_code == 403, url
    assert Topic.objects.count() == 1


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get(reverse("topic_list"))
    assert response.status_code == 302 and "login" in response["Location"]


def test_an_admin_adds_a_topic_and_it_is_trained_and_audited(client, knowledge_admin):
    client.force_login(knowledge_admin)
    response = client.post(reverse("topic_list"), _form(), follow=True)
    assert "is saved" in response.content.decode()
    topic = Topic.objects.get()
    assert topic.weight and topic.trained_for
    event = AuditEvent.objects.filter(kind="topic_change").get()
    assert event.data["action"] == "created" and event.actor_username == knowledge_admin.username


def test_too_few_examples_say_how_many_are_needed(client, knowledge_admin):
    client.force_login(knowledge_admin)
    response = client.post(reverse("topic_list"), _form(examples="what is my tax refund?"))
    assert response.status_code == 200 and "write at least 5" in response.content.decode()
    assert not Topic.objects.exists() and not AuditEvent.objects.filter(kind="topic_change").exists()


def test_names_and_messages_are_escaped(client, knowledge_admin):
    client.force_login(knowledge_admin)
    client.post(reverse("topic_list"), _form(name="<script>alert(1)</script>", contact="<b>HR</b>"))
    page = client.get(reverse("topic_list")).content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>HR</b>" not in page


def test_edit_and_delete_are_audited(client, knowledge_admin, topic):
    client.force_login(knowledge_admin)
    client.post(reverse("topic_edit", args=[topic.pk]), _form(message="Ask payroll, not kb."))
    assert Topic.objects.get().message == "Ask payroll, not kb."
    client.post(reverse("topic_delete", args=[topic.pk]))
    assert not Topic.objects.exists()
    actions = list(
        AuditEvent.objects.filter(kind="topic_change").order_by("seq").values_list("data__action", flat=True)
    )
    assert actions == ["created", "updated", "deleted"]


def test_the_shipped_topics_load_once(client, knowledge_admin):
    client.force_login(knowledge_admin)
    client.post(reverse("topics_load_defaults"))
    client.post(reverse("topics_load_defaults"))
    assert Topic.objects.count() == 4 and Topic.objects.filter(active=True).count() == 4
