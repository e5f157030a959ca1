from kb.accounts.roles import Role, has_role


def roles(request):
    user = getattr(request, "user", None)
    return {
        "is_employee": has_role(user, Role.EMPLOYEE),
        "is_knowledge_admin": has_role(user, Role.KNOWLEDGE_ADMIN),
        "is_compliance": has_role(user, Role.COMPLIANCE),
    }
