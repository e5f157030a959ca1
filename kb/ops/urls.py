from django.urls import path

from kb.ops import views

urlpatterns = [
    path("", views.ops_home, name="ops_home"),
    path("configurations", views.ops_configuration_create, name="ops_configuration_create"),
    path("rollouts", views.ops_rollout_create, name="ops_rollout_create"),
    path("rollouts/<int:rollout_id>", views.ops_rollout_action, name="ops_rollout_action"),
]
