"""The knowledge admin's search page: what retrieval returns for a query, with each leg's rank."""

from __future__ import annotations

from django.shortcuts import render

from kb.accounts.access import role_required
from kb.accounts.roles import Role
from kb.search.forms import SearchForm
from kb.search.retrieval import search


@role_required(Role.KNOWLEDGE_ADMIN)
def search_page(request):
    form = SearchForm.from_query_string(request.GET)
    result = None
    if "q" in request.GET and form.is_valid():
        data = form.cleaned_data
        result = search(data["q"], request.user, data["k"], mode=data["mode"])
    context = {"form": form, "result": result}
    if request.htmx:
        return render(request, "search/search.html#results", context)
    return render(request, "search/search.html", context)
