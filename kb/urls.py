from django.urls import path

from ingest import views as ingest_views
from kb import health
from kb.accounts import views as account_views
from kb.answers import views as answer_views
from kb.api import api
from kb.audit import views as audit_views

urlpatterns = [
    path("", answer_views.home, name="home"),
    path("login/", account_views.LoginView.as_view(), name="login"),
    path("logout/", account_views.LogoutView.as_view(), name="logout"),
    path("documents/", ingest_views.document_list, name="document_list"),
    path("audit/", audit_views.audit_home, name="audit_home"),
    path("api/v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
]
