"""Which app may import which (GUIDE §2): data flows one way, and offline tooling never enters a request.

Allowed directions, checked here on every import statement of kb/ and ingest/ (also imports inside functions):
- kb.text imports no Django and nothing of kb/ or ingest/: pure text helpers every app can use.
- kb.guard, kb.llm and kb.search never import kb.answers: the ask path calls them, not the other way round.
- kb.guard imports no other app's models: guards get what they need passed in (recent ask times, passage
  texts and vectors, a search of unreadable passages) by the ask path.
- Nothing at runtime (kb/ and ingest/ outside kb/evaluation) imports kb.evaluation: offline tooling (BEIR
  loading, evaluate_retrieval, evaluate_answers, classifier training) imports the product, never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
EVALUATION = BASE_DIR / "kb" / "evaluation"


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every module an import statement names; `from kb import evaluation` counts as `kb.evaluation`."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (BASE_DIR / folder).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    return _imported_modules(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))


def _names(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _offenders(files: list[Path], forbidden) -> list[str]:
    return [f"{path.relative_to(BASE_DIR)}: {name}" for path in files for name in _imports(path) if forbidden(name)]


def test_the_import_scan_sees_imports_at_the_top_and_inside_functions():
    tree = ast.parse("from kb import evaluation\nimport os\n\ndef f():\n    from kb.evaluation.beir import evaluate\n")
    assert "kb.evaluation" in _imported_modules(tree)
    assert "kb.evaluation.beir" in _imported_modules(tree)
    assert "os" in _imported_modules(tree)


def test_no_runtime_module_imports_the_evaluation_app():
    files = [path for path in _files("kb", "ingest") if not path.is_relative_to(EVALUATION)]
    assert len(files) > 50, "the scan found the product's modules"
    assert _offenders(files, lambda name: _names(name, "kb.evaluation")) == []


@pytest.mark.parametrize("app", ["kb/guard", "kb/llm", "kb/search"])
def test_guards_models_and_search_do_not_import_the_ask_path(app):
    files = _files(app)
    assert files
    assert _offenders(files, lambda name: _names(name, "kb.answers")) == []


def test_guards_import_no_other_apps_models():
    def other_models(name: str) -> bool:
        parts = name.split(".")
        return "models" in parts and not _names(name, "kb.guard") and parts[0] in ("kb", "ingest")

    assert _offenders(_files("kb/guard"), other_models) == []


def test_text_helpers_are_pure():
    (path,) = [BASE_DIR / "kb" / "text.py"]
    imported = _imports(path)
    assert [name for name in imported if name.split(".")[0] in ("django", "kb", "ingest")] == []
