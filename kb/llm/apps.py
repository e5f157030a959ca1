from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "kb.llm"
    label = "llm"
