from django.shortcuts import render

from kb.accounts.access import role_required
from kb.accounts.roles import Role


@role_required(Role.KNOWLEDGE_ADMIN)
def document_list(request):
    return render(request, "ingest/document_list.html")
