"""One read-permission rule: what search's SQL admits is what `Document.objects.readable_by` returns, for
every kind of user."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection

from ingest.models import Chunk, Document, ReadScope
from kb.search.retrieval import search
from tests.factories import AccessGroupFactory, UserFactory

pytestmark = pytest.mark.django_db

# Who sees which documents: "public" have no access group, "a" and "b" are the corpus's groups, "both" is in
# groups a and b, "other" in a group nobody here belongs to.
EVERY_KIND = {"public", "a", "b", "both", "other"}
USERS: dict[str, set[str]] = {
    "superuser": EVERY_KIND,
    "knowledge_admin": EVERY_KIND,
    "knowledge_admin_and_employee": EVERY_KIND,
    "employee_in_no_group": {"public"},
    "employee_in_group_a": {"public", "a", "both"},
    "employee_in_group_b": {"public", "b", "both"},
    "employee_in_groups_a_and_b": {"public", "a", "b", "both"},
    "employee_in_an_unused_group": {"public"},
    "compliance": set(),
    "no_role": set(),
    "inactive_employee_in_group_a": set(),
    "anonymous": set(),
}


def _user(name: str, corpus):
    if name == "anonymous":
        return AnonymousUser()
    roles = {
        "superuser": [],
        "knowledge_admin": ["Knowledge admin"],
        "knowledge_admin_and_employee": ["Knowledge admin", "Employee"],
        "compliance": ["Compliance"],
        "no_role": [],
    }.get(name, ["Employee"])
    user = UserFactory(roles=roles, is_superuser=name == "superuser", is_active=not name.startswith("inactive"))
    if "group_a" in name or "groups_a" in name:
        user.access_groups.add(corpus.group_a)
    if "group_b" in name or "and_b" in name:
        user.access_groups.add(corpus.group_b)
    if "unused_group" in name:
        user.access_groups.add(AccessGroupFactory())
    return user


@pytest.fixture
def documents_by_kind(search_corpus) -> dict[str, set[int]]:
    """The corpus's searchable documents by who may read them, with a few more without passages: one in both
    groups, one in another group, and unsearchable ones (never admitted by search)."""

    def document(title: str, *groups, searchable: bool = True) -> int:
        created = Document.objects.create(
            title=title, filename=f"{title}.md", sha256="0" * 64, size=1, searchable=searchable
        )
        created.access_groups.set(groups)
        return created.pk

    a, b = search_corpus.group_a, search_corpus.group_b
    document("draft without groups", searchable=False)
    document("draft for group a", a, searchable=False)
    return {
        "public": set(search_corpus.public_ids + search_corpus.generated_ids),
        "a": set(search_corpus.group_a_ids),
        "b": set(search_corpus.group_b_ids),
        "both": {document("memo for groups a and b", a, b)},
        "other": {document("memo for another group", AccessGroupFactory())},
    }


def _admitted_by_search_sql(scope: ReadScope) -> set[int]:
    allowed, params = scope.sql()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT ingest_document.id FROM ingest_document WHERE {allowed}", params)
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.parametrize("name", USERS)
def test_search_admits_exactly_the_documents_readable_by_the_user(search_corpus, documents_by_kind, name):
    user = _user(name, search_corpus)
    known = set().union(*documents_by_kind.values())
    expected = set().union(*(documents_by_kind[kind] for kind in USERS[name]))

    readable = set(Document.objects.searchable().readable_by(user).values_list("pk", flat=True)) & known
    admitted = _admitted_by_search_sql(ReadScope.for_user(user)) & known

    assert readable == expected
    assert admitted == readable


@pytest.mark.parametrize("name", ["superuser", "employee_in_no_group", "employee_in_group_a", "compliance"])
def test_a_search_for_every_passage_finds_the_readable_documents_and_no_other(search_corpus, name):
    user = _user(name, search_corpus)
    every_passage = Chunk.objects.count()
    found = {hit.document_id for hit in search("travel ledger", user, every_passage, mode="vector").hits}
    with_passages = Document.objects.searchable().readable_by(user).filter(chunks__isnull=False)
    assert found == set(with_passages.values_list("pk", flat=True))
