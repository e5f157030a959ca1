"""The ask pipeline's fixtures (`corpus`, `hr_employee`, `fake_anthropic`) live in tests/conftest.py: the
browser and guard tests use them too."""
