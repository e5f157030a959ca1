"""The Prometheus rules in deploy/prometheus/ checked and unit-tested with Debian's promtool (package `prometheus`,
installed by tests/ensure_system_packages.sh): the cases are in deploy/prometheus/tests/kb-slo.test.yml (a 30 %
error rate pages through the fast-burn alert within 20 minutes and not before, an error rate within budget fires
nothing, a moderate one raises the slow-burn ticket only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

PROMETHEUS = Path(settings.BASE_DIR) / "deploy" / "prometheus"
RULES = PROMETHEUS / "kb-slo.rules.yml"
TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run tests/ensure_system_packages.sh as root (Debian package prometheus)"
    return path


def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_rules_are_valid(promtool):
    checked = run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 16 rules found" in checked.stdout


def test_the_rules_pass_their_unit_tests(promtool):
    assert TESTS, "deploy/prometheus/tests/ has the promtool tests"
    tested = run(promtool, "test", "rules", *map(str, TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_unit_tests_catch_a_fast_alert_that_would_not_fire(promtool, tmp_path):
    """The 30 % case fails against rules whose fast alert waits for a burn rate of 100 (it would need 50 % of
    questions failing): the promtool tests can fail."""
    rules = RULES.read_text()
    fast = "kb_slo:burn_rate:1h > 14.4 and kb_slo:burn_rate:5m > 14.4"
    assert fast in rules
    (tmp_path / "kb-slo.rules.yml").write_text(rules.replace(fast, fast.replace("14.4", "100")))
    (tmp_path / "tests").mkdir()
    test = tmp_path / "tests" / "kb-slo.test.yml"
    test.write_text((PROMETHEUS / "tests" / "kb-slo.test.yml").read_text())
    tested = run(promtool, "test", "rules", str(test), cwd=tmp_path)
    assert tested.returncode != 0
    assert "a 30 % error rate pages through the fast-burn alert within 20 minutes" in tested.stdout + tested.stderr
    assert "alertname: KbSloFastBurn, time: 3d20m" in tested.stdout + tested.stderr
