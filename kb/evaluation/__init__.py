"""Offline tooling: BEIR loading and retrieval metrics (`beir`), the answer evaluation (`answers`), the
`evaluate_retrieval` and `evaluate_answers` commands, and the injection classifier's trainer
(`python -m kb.evaluation.train_injection`).

It reads the runtime apps (their parsers, services, settings and models) and nothing at runtime imports it
(tests/evaluation/test_isolation.py checks): what a runtime app and this tooling share is defined in the
runtime app.
"""
