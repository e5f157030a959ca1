"""The knowledge admin's search page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import UserFactory
from tests.search.conftest import TOPIC

pytestmark = pytest.mark.django_db
URL = reverse("search")


@pytest.mark.parametrize("who", ["employee", "compliance"])
def test_other_roles_get_403(client, request, who):
    client.force_login(request.getfixturevalue(who))
    assert client.get(URL, {"q": "travel"}).status_code == 403


def test_anonymous_users_are_sent_to_login(client):
    response = client.get(URL, {"q": "travel"})
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_empty_page_shows_the_form(client, knowledge_admin):
    client.force_login(knowledge_admin)
    response = client.get(URL)
    assert response.status_code == 200
    assert b'name="q"' in response.content and b"Results appear here" in response.content


def test_results_show_passage_title_heading_ranks_and_fused_score(client, knowledge_admin, search_corpus):
    client.force_login(knowledge_admin)
    response = client.get(URL, {"q": "train travel first class", "mode": "hybrid", "k": 3})
    assert response.status_code == 200
    page = response.content.decode()
    assert "3 passages · hybrid" in page
    assert "Travel policy" in page and "train travel through the travel desk" in page
    assert "Vector rank</dt><dd>1" in page and "BM25 rank</dt><dd>1" in page
    assert f"{2 / 61:.4f}" in page
    assert reverse("document_detail", args=[search_corpus.public_ids[0]]) in page


@pytest.mark.parametrize("mode", ["bm25", "vector"])
def test_the_mode_switch_runs_one_leg(client, knowledge_admin, search_corpus, mode):
    client.force_login(knowledge_admin)
    page = client.get(URL, {"q": "train travel", "mode": mode, "k": 2}).content.decode()
    assert f"2 passages · {mode}" in page
    assert "BM25 rank</dt><dd>–" in page if mode == "vector" else "Vector rank</dt><dd>–" in page


def test_passages_are_escaped(client, knowledge_admin, search_corpus):
    from tests.search.conftest import ingest_file

    # Plain text keeps markup as written (the Markdown parser would drop the tags itself).
    ingest_file("Markup\n\nThe <script>alert('x')</script> marker word quokkaberry.\n", "markup.txt")
    client.force_login(knowledge_admin)
    page = client.get(URL, {"q": "quokkaberry", "mode": "bm25", "k": 1}).content.decode()
    assert "quokkaberry" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


def test_an_htmx_request_gets_the_results_partial(client, knowledge_admin, search_corpus):
    client.force_login(knowledge_admin)
    page = client.get(URL, {"q": "travel"}, headers={"HX-Request": "true"}).content.decode()
    assert 'id="search-results"' in page and "<html" not in page


@pytest.mark.parametrize(
    "params",
    [{"q": ""}, {"q": "x" * 10_000}, {"q": "the of and"}, {"q": "'; DROP TABLE x; --"}, {"q": "a & b | !c <-> d :*"}],
)
def test_bad_input_never_gives_an_error_page(client, knowledge_admin, search_corpus, params):
    client.force_login(knowledge_admin)
    assert client.get(URL, params).status_code == 200


@pytest.mark.parametrize("params", [{"q": "travel", "mode": "fuzzy"}, {"q": "travel", "k": "lots"}, {"k": "999"}])
def test_invalid_parameters_are_reported_on_the_form(client, knowledge_admin, params):
    client.force_login(knowledge_admin)
    response = client.get(URL, params)
    assert response.status_code == 200 and b'class="error"' in response.content


def test_the_page_searches_what_the_admin_may_read(client, search_corpus):
    """Knowledge admins manage every document (`readable_by`), so the page shows both groups' passages;
    the group filter for employees is tested on the service, in test_retrieval.py."""
    admin = UserFactory(roles=["Knowledge admin"])
    client.force_login(admin)
    page = client.get(URL, {"q": TOPIC, "k": 20}).content.decode()
    assert "Restricted board memo" in page and "Finance team note" in page


def test_a_group_a_employee_cannot_open_the_page(client, search_corpus):
    member = UserFactory(roles=["Employee"])
    member.access_groups.add(search_corpus.group_a)
    client.force_login(member)
    response = client.get(URL, {"q": TOPIC})
    assert response.status_code == 403 and b"Restricted board memo" not in response.content


def test_a_first_visit_selects_the_hybrid_mode(client, knowledge_admin):
    client.force_login(knowledge_admin)
    page = client.get(URL).content.decode()
    assert 'value="hybrid"' in page and 'value="hybrid"\n' not in page
    assert page.count("checked") == 1 and 'value="hybrid" required id="id_mode_0" checked' in page
