from django.contrib.auth import views as auth_views

from kb.accounts import services


def _ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class LoginView(auth_views.LoginView):
    """Django's sign-in, with repeated failures locking the account name and the address out for a while."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")
        wait = services.sign_in_wait_s(username=username, ip=_ip(request))
        if wait:
            # An unbound form: the password is not even checked while the lockout lasts.
            form = self.get_form_class()(request=request, initial={"username": username})
            minutes = max(1, round(wait / 60))
            lockout = (
                f"Too many failed sign-ins: try again in {minutes} minute{'s' if minutes != 1 else ''}, "
                "or ask an administrator to reset your password."
            )
            response = self.render_to_response(self.get_context_data(form=form, lockout=lockout), status=429)
            response["Retry-After"] = str(wait)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        services.sign_in_failed(username=self.request.POST.get("username", ""), ip=_ip(self.request))
        return super().form_invalid(form)

    def form_valid(self, form):
        services.sign_in_succeeded(username=form.get_user().get_username())
        return super().form_valid(form)


class LogoutView(auth_views.LogoutView):
    pass
