from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    """Installed for its management commands; it has no models."""

    name = "kb.evaluation"
    label = "evaluation"
