from django.apps import AppConfig


class AnswersConfig(AppConfig):
    name = "kb.answers"
    label = "answers"
