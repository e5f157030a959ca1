import pytest

from kb.search import embeddings


def test_healthz_answers_without_a_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_each_check_and_is_ready_once_the_model_is_loaded(client, superuser):
    embeddings.get_model()
    client.force_login(superuser)  # staff see each check's detail
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["ready"] is True
    assert set(body["checks"]) == {"database", "broker", "embeddings", "models"}
    assert body["checks"]["models"]["ok"] and body["checks"]["models"]["degrades_only"]
    assert body["checks"]["database"]["pgvector"]
    assert body["checks"]["embeddings"]["model"] == embeddings.model_id()


@pytest.mark.django_db
def test_readyz_is_503_and_says_why_when_the_broker_is_down(client, settings, superuser):
    embeddings.get_model()
    client.force_login(superuser)
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"  # discard port: nothing listens
    from kb.celery import app

    previous, app.conf.broker_url = app.conf.broker_url, settings.CELERY_BROKER_URL
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url = previous
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.django_db
def test_metrics_are_prometheus_text(client):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'kb_http_requests_total{method="GET",status="200"}' in text
    assert "kb_http_request_duration_seconds_bucket" in text


def test_missing_embedding_model_is_named(settings, tmp_path):
    settings.KB_EMBEDDING_MODEL = str(tmp_path / "no-model")
    with pytest.raises(embeddings.EmbeddingModelMissing, match="no sentence-transformers model"):
        embeddings.model_path()


@pytest.mark.django_db
def test_anonymous_readyz_gets_the_verdict_without_internal_details(client, settings, caplog):
    embeddings.get_model()
    from kb.celery import app

    previous, app.conf.broker_url = app.conf.broker_url, "redis://127.0.0.1:9/0"
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url = previous
    body = response.json()
    assert response.status_code == 503 and body["ready"] is False
    assert body["checks"]["broker"] == {"ok": False, "ms": body["checks"]["broker"]["ms"]}
    assert "error" not in body["checks"]["database"] and "pgvector" not in body["checks"]["database"]
    assert any("readiness check broker failing" in record.getMessage() for record in caplog.records)
