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

    # A Redis broker, as CELERY_BROKER_URL=redis://... gives: without the embedded folder transport (kb/broker.py).
    previous = app.conf.broker_url, app.conf.broker_transport
    app.conf.broker_url, app.conf.broker_transport = settings.CELERY_BROKER_URL, None
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url, app.conf.broker_transport = previous
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


@pytest.mark.django_db
def test_metrics_are_refused_to_callers_from_elsewhere(client, settings):
    settings.KB_METRICS_TOKEN = ""
    for headers, remote in (({}, "203.0.113.7"), ({"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1")):
        # From another machine, or through a proxy on this one: refused in one line that says what to do.
        response = client.get("/metrics", headers=headers, REMOTE_ADDR=remote)
        assert response.status_code == 403
        assert (
            "KB_METRICS_TOKEN" in response.content.decode()
            and "kb_http_requests_total" not in response.content.decode()
        )
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


@pytest.mark.django_db
def test_a_scraper_with_the_metrics_token_reads_them_from_anywhere(client, settings):
    settings.KB_METRICS_TOKEN = "s3cret-scraper-token"
    remote = {"REMOTE_ADDR": "203.0.113.7"}
    wrong = client.get("/metrics", headers={"Authorization": "Bearer guess"}, **remote)
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"] == "Bearer"
    assert client.get("/metrics", **remote).status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scraper-token"}, **remote)
    assert response.status_code == 200 and "kb_http_requests_total" in response.content.decode()


def test_missing_embedding_model_is_named(settings, tmp_path):
    settings.KB_EMBEDDING_MODEL = str(tmp_path / "no-model")
    with pytest.raises(embeddings.EmbeddingModelMissing, match="no sentence-transformers model"):
        embeddings.model_path()


@pytest.mark.django_db
def test_anonymous_readyz_gets_the_verdict_without_internal_details(client, settings, caplog):
    embeddings.get_model()
    from kb.celery import app

    previous = app.conf.broker_url, app.conf.broker_transport
    app.conf.broker_url, app.conf.broker_transport = "redis://127.0.0.1:9/0", None
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url, app.conf.broker_transport = previous
    body = response.json()
    assert response.status_code == 503 and body["ready"] is False
    assert body["checks"]["broker"] == {"ok": False, "ms": body["checks"]["broker"]["ms"]}
    assert "error" not in body["checks"]["database"] and "pgvector" not in body["checks"]["database"]
    assert any("readiness check broker failing" in record.getMessage() for record in caplog.records)


def test_the_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert b"".join(response.streaming_content).startswith(b"\x00\x00\x01\x00")  # an ICO header


@pytest.mark.django_db
def test_a_refused_request_is_one_log_line_not_a_traceback(client, employee):
    import io
    import logging

    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        client.force_login(employee)
        assert client.get("/audit/").status_code == 403
    finally:
        logger.removeHandler(handler)
    assert written.getvalue().splitlines() == ["WARNING django.request Forbidden (Permission denied): /audit/"]
