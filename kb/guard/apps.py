from django.apps import AppConfig


class GuardConfig(AppConfig):
    name = "kb.guard"
    label = "guard"
