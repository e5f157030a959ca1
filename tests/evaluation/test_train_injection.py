"""The injection classifier's trainer (`python -m kb.evaluation.train_injection`): how it cuts BIPIA windows and
splits the employee questions. The shipped weights themselves are checked in tests/guard/test_injection.py."""

from __future__ import annotations

from kb.evaluation import train_injection


def test_a_bipia_window_keeps_the_attack_and_fits_the_budget():
    context = "\n".join(f"Line {i} of an ordinary e-mail about invoices." for i in range(40))
    count = len  # characters stand in for tokens
    for position in train_injection.POSITIONS:
        window = train_injection.bipia_window(context, "ATTACK: do this.", position, 200, count)
        assert "ATTACK: do this." in window
        assert len(window) <= 200
        clean = train_injection.bipia_window(context, None, position, 200, count)
        assert "ATTACK" not in clean and 0 < len(clean) <= 200
    assert train_injection.bipia_window(context, "x" * 500, "middle", 200, count) == "x" * 500


def test_employee_questions_are_split_in_fixed_halves():
    first, second = train_injection.employee_questions()
    assert len(second) >= 100 and len(first) + len(second) >= 200
    assert not set(first) & set(second)
