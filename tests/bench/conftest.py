"""Benchmarks sign audit checkpoints with a key of their own and keep their own witness: the database is rolled
back after each benchmark, and a shared witness would keep lines whose rows are gone. Set in the environment
too, so that the servers and workers a benchmark starts sign with the same key into the same witness."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def audit_key_and_witness(settings, tmp_path, monkeypatch):
    settings.KB_AUDIT_SIGNING_KEY = tmp_path / "audit-signing-key.pem"
    settings.KB_AUDIT_WITNESS_DIR = tmp_path / "audit-witness"
    monkeypatch.setenv("KB_AUDIT_SIGNING_KEY", str(settings.KB_AUDIT_SIGNING_KEY))
    monkeypatch.setenv("KB_AUDIT_WITNESS_DIR", str(settings.KB_AUDIT_WITNESS_DIR))
    return settings
