import pytest
from django.urls import reverse

from tests.factories import UserFactory

PAGES = {"ask": "home", "documents": "document_list", "audit": "audit_home"}
MENU = {"ask": 'href="/"', "documents": 'href="/documents/"', "audit": 'href="/audit/"'}

# What each role may open; the home page is open to every signed-in user.
ALLOWED = {
    "employee": {"ask"},
    "knowledge_admin": {"ask", "documents"},
    "compliance": {"ask", "audit"},
    "superuser": {"ask", "documents", "audit"},
}
MENUS = {
    "employee": {"ask"},
    "knowledge_admin": {"documents"},
    "compliance": {"audit"},
    "superuser": {"ask", "documents", "audit"},
}


@pytest.mark.parametrize("who", ["employee", "knowledge_admin", "compliance", "superuser"])
def test_each_role_sees_only_its_menu_and_gets_403_elsewhere(client, request, who):
    user = request.getfixturevalue(who)
    client.force_login(user)
    for page, url_name in PAGES.items():
        response = client.get(reverse(url_name))
        expected = 200 if page in ALLOWED[who] else 403
        assert response.status_code == expected, (who, page)
    home = client.get(reverse("home")).content.decode()
    nav = home.split('<nav aria-label="Main">')[1].split("</nav>")[0]
    for item, marker in MENU.items():
        assert (marker in nav) == (item in MENUS[who]), (who, item)


def test_forbidden_page_explains_what_is_missing(client, employee):
    client.force_login(employee)
    response = client.get(reverse("audit_home"))
    assert response.status_code == 403
    body = response.content.decode()
    assert "You do not have access to this page" in body
    assert "Compliance role" in body


def test_anonymous_users_are_sent_to_login(client, db):
    for url_name in PAGES.values():
        response = client.get(reverse(url_name))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_user_without_role_is_told_how_to_get_one(client, db):
    client.force_login(UserFactory())
    body = client.get(reverse("home")).content.decode()
    assert "has no role yet" in body


def test_unknown_page_is_a_styled_404(client, employee, settings):
    settings.DEBUG = False
    client.force_login(employee)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()
