"""``notebooks/exercises.py``: what the exercise checks print for each kind of answer.

The checks run inside the notebooks, so they must never raise, must not show the hint before a
reader has tried, and must not give away the expected numbers.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "notebooks" / "exercises.py"
_spec = importlib.util.spec_from_file_location("notebook_exercises", _PATH)
exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exercises)

HINT = "think about the rows"
EXPECTED = np.array([[1.25, -2.5], [3.75, 40.125]])


def _printed(capsys, answer, expected=EXPECTED, **options):
    exercises.check("Exercise 9", answer, expected, HINT, **options)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, f"one line per check, got {out!r}"
    return out


def test_placeholder_says_not_yet_without_hint(capsys):
    out = _printed(capsys, None)
    assert out.startswith("Exercise 9: not yet")
    assert HINT not in out and "Hint" not in out


def test_right_answer(capsys):
    out = _printed(capsys, EXPECTED * (1 + 1e-9))
    assert out == "Exercise 9: right.\n"


def test_right_answer_as_nested_list_and_tuple(capsys):
    assert _printed(capsys, EXPECTED.tolist()) == "Exercise 9: right.\n"
    assert _printed(capsys, (0.1, 0.2), expected=np.array([0.1, 0.2])) == "Exercise 9: right.\n"


def test_wrong_value_is_not_reported_as_a_shape_problem(capsys):
    wrong = EXPECTED.copy()
    wrong[1, 1] += 1.0
    out = _printed(capsys, wrong)
    assert "not right yet" in out and f"Hint: {HINT}" in out
    assert "shape is right" in out and "1 of the 4 values" in out
    assert "has shape" not in out


def test_wrong_scalar_value(capsys):
    out = _printed(capsys, 7.0, expected=7.5)
    assert "not right yet" in out and "value is not" in out and HINT in out
    assert "7.5" not in out, "the expected value must not be printed"


def test_expected_values_are_never_printed(capsys):
    out = _printed(capsys, np.zeros((2, 2)))
    for value in EXPECTED.ravel():
        assert f"{value:g}" not in out


def test_wrong_shape_names_both_shapes(capsys):
    out = _printed(capsys, np.zeros(4))
    assert "shape (4,)" in out and "shape (2, 2)" in out and HINT in out
    out = _printed(capsys, np.zeros((1, 2, 2)))
    assert "shape (1, 2, 2)" in out and "shape (2, 2)" in out


def test_nan_is_named(capsys):
    out = _printed(capsys, np.full((2, 2), np.nan))
    assert "4 of the 4 values" in out and "NaN" in out


def test_hint_only_after_a_wrong_answer(capsys):
    assert HINT not in _printed(capsys, None)
    assert HINT not in _printed(capsys, EXPECTED)
    assert HINT in _printed(capsys, EXPECTED + 1)


@pytest.mark.parametrize("answer", ["forty", [[1.0, 2.0], [3.0]], {"a": 1}, object()],
                         ids=["str", "ragged", "dict", "object"])
def test_non_numeric_answer_does_not_raise(capsys, answer):
    out = _printed(capsys, answer)
    assert "not right yet" in out and "number" in out and HINT in out


def test_tensor_that_requires_grad_does_not_raise(capsys):
    torch = pytest.importorskip("torch")
    out = _printed(capsys, torch.ones(2, 2, requires_grad=True))
    assert "not right yet" in out


def test_validate_catches_a_right_value_computed_against_the_instruction(capsys):
    def float32_only(answer):
        dtype = np.asarray(answer).dtype
        return None if dtype == np.float32 else f"compute in float32, not {dtype}"

    right_float64 = _printed(capsys, EXPECTED, validate=float32_only)
    assert "not right yet: compute in float32, not float64" in right_float64
    assert HINT in right_float64
    right_float32 = _printed(capsys, EXPECTED.astype(np.float32), rtol=1e-6, validate=float32_only)
    assert right_float32 == "Exercise 9: right.\n"


def test_validate_runs_only_on_a_right_value(capsys):
    calls = []
    exercises.check("Exercise 9", EXPECTED + 1, EXPECTED, HINT, validate=calls.append)
    exercises.check("Exercise 9", None, EXPECTED, HINT, validate=calls.append)
    capsys.readouterr()
    assert calls == []


def test_validate_that_raises_does_not_raise(capsys):
    out = _printed(capsys, EXPECTED, validate=lambda answer: 1 / 0)
    assert "not right yet" in out and "ZeroDivisionError" in out


def test_keyword_and_positional_tolerances(capsys):
    exercises.check("Exercise 9", 1.01, 1.0, HINT, 1e-1)
    assert capsys.readouterr().out == "Exercise 9: right.\n"
    exercises.check("Exercise 9", 1.01, 1.0, hint=HINT, rtol=1e-3)
    assert "not right yet" in capsys.readouterr().out


def test_callable_answer_is_called_and_its_result_checked(capsys):
    assert _printed(capsys, lambda: EXPECTED.tolist()) == "Exercise 9: right.\n"
    out = _printed(capsys, lambda: EXPECTED + 1)
    assert "not right yet" in out and "4 of the 4 values" in out and HINT in out


def test_callable_returning_the_placeholder_says_not_yet(capsys):
    def unanswered():
        return None

    out = _printed(capsys, unanswered)
    assert out.startswith("Exercise 9: not yet") and HINT not in out


def test_callable_that_raises_is_one_wrong_line_with_the_hint(capsys):
    rows = [{"task": "control", "score": None}, {"task": "context", "score": 0.5}]

    def forgot_to_filter():  # the natural mistake: None from rows the reader should have skipped
        return sum(row["score"] for row in rows)

    out = _printed(capsys, forgot_to_filter)
    assert out.startswith("Exercise 9: not right yet: your function raised TypeError: ")
    assert "unsupported operand" in out and out.rstrip().endswith(f"Hint: {HINT}")


def test_callable_error_message_on_several_lines_stays_on_one(capsys):
    def raises():
        raise ValueError("first line\nsecond line")

    out = _printed(capsys, raises)
    assert "your function raised ValueError: first line second line. Hint:" in out


def test_callable_error_without_message(capsys):
    def raises():
        raise KeyError

    out = _printed(capsys, raises)
    assert "your function raised KeyError. Hint:" in out


def test_callable_that_needs_arguments_is_reported_not_raised(capsys):
    out = _printed(capsys, lambda x: x)
    assert "your function raised TypeError" in out and HINT in out


def test_callable_result_goes_through_validate(capsys):
    out = _printed(capsys, lambda: EXPECTED, validate=lambda answer: "computed the wrong way")
    assert "not right yet: computed the wrong way" in out


def test_callable_returning_a_function_is_not_numeric(capsys):
    out = _printed(capsys, lambda: print)
    assert "not right yet" in out and "number" in out and "got builtin_function_or_method" in out
