from django.urls import include, path

from ingest import views as ingest_views
from kb import health
from kb.accounts import views as account_views
from kb.answers import views as answer_views
from kb.api import api
from kb.audit import views as audit_views
from kb.guard import views as guard_views
from kb.search import views as search_views

urlpatterns = [
    path("", answer_views.home, name="home"),
    path("ask", answer_views.ask_submit, name="ask_submit"),
    path("c/<int:conversation_id>/", answer_views.conversation_detail, name="conversation_detail"),
    path("exchanges/<int:exchange_id>/", answer_views.exchange_detail, name="exchange_detail"),
    path("exchanges/<int:exchange_id>/sources/<int:n>", answer_views.citation_panel, name="citation_panel"),
    path("exchanges/<int:exchange_id>/feedback", answer_views.feedback_submit, name="feedback_submit"),
    path("read/<int:document_id>/", answer_views.document_read, name="document_read"),
    path("login/", account_views.LoginView.as_view(), name="login"),
    path("logout/", account_views.LogoutView.as_view(), name="logout"),
    path("documents/", ingest_views.document_list, name="document_list"),
    path("documents/upload", ingest_views.document_upload, name="document_upload"),
    path("documents/reindex", ingest_views.documents_reindex_all, name="documents_reindex_all"),
    path("documents/demo/remove", ingest_views.documents_demo_remove, name="documents_demo_remove"),
    path("documents/<int:document_id>/", ingest_views.document_detail, name="document_detail"),
    path("documents/<int:document_id>/replace", ingest_views.document_replace, name="document_replace"),
    path("documents/<int:document_id>/delete", ingest_views.document_delete, name="document_delete"),
    path("documents/<int:document_id>/reindex", ingest_views.document_reindex, name="document_reindex"),
    path("documents/<int:document_id>/access", ingest_views.document_access, name="document_access"),
    path("topics/", guard_views.topic_list, name="topic_list"),
    path("topics/defaults", guard_views.topics_load_defaults, name="topics_load_defaults"),
    path("topics/<int:topic_id>/", guard_views.topic_edit, name="topic_edit"),
    path("topics/<int:topic_id>/delete", guard_views.topic_delete, name="topic_delete"),
    path("audit/", audit_views.audit_home, name="audit_home"),
    path("audit/<int:seq>/", audit_views.audit_detail, name="audit_detail"),
    path("audit/analytics/", audit_views.audit_analytics, name="audit_analytics"),
    path("audit/export", audit_views.audit_export, name="audit_export"),
    path("audit/verify", audit_views.audit_verify, name="audit_verify"),
    path("audit/legal-hold", audit_views.audit_legal_hold, name="audit_legal_hold"),
    path("search/", search_views.search_page, name="search"),
    path("api/v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("ops/", include("kb.ops.urls")),  # Operations: answer configurations and rollouts (kb/ops)
]

# A lost database connection answers 503 with what to do (kb/unavailable.py); anything else is a 500.
handler500 = "kb.unavailable.server_error"
