from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "ingest"
    label = "ingest"
    verbose_name = "Documents and ingestion"
