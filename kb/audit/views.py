from django.shortcuts import render

from kb.accounts.access import role_required
from kb.accounts.roles import Role


@role_required(Role.COMPLIANCE)
def audit_home(request):
    return render(request, "audit/home.html")
