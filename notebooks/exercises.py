"""The checks behind the notebooks' exercises: they say whether an answer is right, never raise.

An exercise ships with a placeholder answer, ``None``; its check reports "not yet" for it,
so a notebook with unanswered exercises still runs from top to bottom. The hint is printed
only once an answer is wrong: a reader who has not tried yet sees no hint.

An answer computed by the reader's own function is passed as a zero-argument callable
(``lambda: f(data)``): the check calls it, so that an error inside the reader's function is
reported as a wrong answer, with the hint, instead of stopping the notebook.

A wrong answer is told what is wrong without being told the expected numbers: that it is not
numeric, that its shape differs (both shapes are given: a shape is part of the question),
that it breaks the exercise's instruction (``validate``), or that its values differ (how many
entries, and whether some are NaN).
"""

import numpy as np


def _as_numbers(answer):
    """``answer`` as a float array, or ``None`` when it is not numeric (a string, a function,
    a ragged list, a tensor that still needs its gradient)."""
    try:
        numbers = np.asarray(answer, dtype=float)
    except Exception:  # any conversion failure means "not numbers"; the check must not raise
        return None
    return numbers


def _what_differs(answer, expected, rtol, atol):
    """Why ``answer`` (float array) is not ``expected``, or ``None`` if it is within tolerance."""
    if answer.shape != expected.shape:
        return f"your answer has shape {answer.shape}, the exercise asks for shape {expected.shape}"
    close = np.isclose(answer, expected, rtol=rtol, atol=atol)
    if close.all():
        return None
    nan = int(np.isnan(answer).sum())
    nan_note = f" ({nan} of them NaN)" if nan else ""
    if answer.size == 1:
        return f"the shape is right but the value is not (tolerance rtol={rtol:g}){nan_note}"
    return (f"the shape is right but {int((~close).sum())} of the {answer.size} values are not "
            f"(tolerance rtol={rtol:g}){nan_note}")


def _one_line(error):
    """``"TypeError: message"`` of an exception, its message's whitespace folded onto one line."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def check(name, answer, expected, hint, rtol=1e-6, atol=1e-12, validate=None):
    """Print whether ``answer`` equals ``expected``; never raise.

    Parameters
    ----------
    name : str
        The exercise, as the printed line starts ("Exercise 2").
    answer : None, number, array-like, or callable
        ``None`` is the placeholder: "not yet", and no hint. A callable is called with no
        arguments and its result is checked as the answer; if it raises, the error is reported
        as a wrong answer with the hint.
    expected : number or array-like
        The right answer, as the package computes it. Never printed.
    hint : str
        Printed only after a wrong answer.
    rtol, atol : float
        Tolerances of :func:`numpy.isclose`.
    validate : callable, optional
        ``validate(answer) -> str or None``: checks a property of the answer that the value
        alone cannot show, such as the exercise's instruction having been followed (a dtype,
        how a function behaves on other inputs). It returns a message saying what is wrong, or
        ``None``. It runs only on a numeric answer of the right shape and value, so that it
        never turns a plain wrong value into a complaint about the method.
    """
    if callable(answer):
        try:
            answer = answer()
        except Exception as error:  # the reader's function failing is a wrong answer, not a crash
            print(f"{name}: not right yet: your function raised {_one_line(error)}. Hint: {hint}")
            return
    if answer is None:
        print(f"{name}: not yet (the answer is still None).")
        return
    numbers = _as_numbers(answer)
    if numbers is None:
        kind = type(answer).__name__
        problem = f"the answer should be a number or an array of numbers, got {kind}"
    else:
        problem = _what_differs(numbers, np.asarray(expected, dtype=float), rtol, atol)
    if problem is None and validate is not None:
        try:
            problem = validate(answer)
        except Exception as error:  # a check must not stop the notebook
            problem = (f"checking how the answer was computed failed: "
                       f"{type(error).__name__}: {error}")
    if problem is None:
        print(f"{name}: right.")
    else:
        print(f"{name}: not right yet: {problem}. Hint: {hint}")
