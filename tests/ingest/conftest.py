import pytest

from ingest import services
from ingest.models import Document


@pytest.fixture
def loaded_demo(db, settings, tmp_path, monkeypatch) -> list[Document]:
    """The demo corpus as the first start uploads it (queued, not indexed: nothing here needs its passages)."""
    settings.KB_DATA_DIR = tmp_path
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    assert services.demo_corpus_ensure(stdout=lambda line: None) == 5
    return list(Document.objects.demo())
