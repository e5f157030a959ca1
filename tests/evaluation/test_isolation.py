"""Nothing at runtime imports the evaluation app: the product's modules (kb/ and ingest/, outside
kb/evaluation) never name `kb.evaluation` in an import, so offline tooling cannot slip into a request."""

from __future__ import annotations

import ast
from pathlib import Path

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


def _runtime_files() -> list[Path]:
    files = [*(BASE_DIR / "kb").rglob("*.py"), *(BASE_DIR / "ingest").rglob("*.py")]
    return sorted(path for path in files if not path.is_relative_to(EVALUATION))


def test_the_import_scan_sees_an_import_of_the_evaluation_app():
    tree = ast.parse("from kb import evaluation\nimport os\n\ndef f():\n    from kb.evaluation.beir import evaluate\n")
    assert "kb.evaluation" in _imported_modules(tree)
    assert "kb.evaluation.beir" in _imported_modules(tree)


def test_no_runtime_module_imports_the_evaluation_app():
    files = _runtime_files()
    assert len(files) > 50, "the scan found the product's modules"
    offenders = [
        f"{path.relative_to(BASE_DIR)}: {name}"
        for path in files
        for name in _imported_modules(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        if name == "kb.evaluation" or name.startswith("kb.evaluation.")
    ]
    assert offenders == [], "move what runtime code needs into the runtime app and import it from there"
