"""The mixture benchmark's ``--check`` on made-up timings: nothing is timed or fitted here."""

import importlib.util
import os
import pathlib
import types
from unittest import mock

import numpy as np
import pytest

BENCHMARK = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gmm.py"


@pytest.fixture(scope="module")
def bench_gmm():
    spec = importlib.util.spec_from_file_location("bench_gmm", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ):  # the script sets SCIPY_ARRAY_API: keep it to itself
        spec.loader.exec_module(module)
    return module


def grid(bench_gmm, ratio, headline_ratio, difference=1e-13):
    """Every cell of the grid at ``ratio`` (seconds: ratio against 1), the headline cell at
    ``headline_ratio``."""
    return [bench_gmm.Cell(shape, covariance_type,
                           headline_ratio if (shape, covariance_type) == bench_gmm.HEADLINE
                           else ratio, 1.0, difference)
            for shape in bench_gmm.SHAPES for covariance_type in bench_gmm.TYPES]


def test_targets_are_those_of_the_issue(bench_gmm):
    assert (bench_gmm.TARGET, bench_gmm.HEADLINE_TARGET, bench_gmm.GOAL) == (0.30, 0.18, 0.2)
    assert bench_gmm.HEADLINE == ((100_000, 16, 16), "full")
    assert bench_gmm.HEADLINE in [(shape, covariance_type) for shape in bench_gmm.SHAPES
                                  for covariance_type in bench_gmm.TYPES]


def test_cells_within_their_targets_pass_and_goal_misses_are_only_information(bench_gmm):
    cells = grid(bench_gmm, ratio=0.30, headline_ratio=0.18)
    assert bench_gmm.check(cells) == []
    assert len(bench_gmm.goal_misses(cells)) == 11  # every cell but the headline is > 0.2
    assert bench_gmm.report(cells, quick=False, check_requested=True) == 0


def test_a_cell_over_the_target_fails_with_one_line_naming_it(bench_gmm):
    cells = grid(bench_gmm, ratio=0.25, headline_ratio=0.15)
    cells[5] = cells[5]._replace(ours=0.31)  # 20000 x 128 x 8, tied
    failures = bench_gmm.check(cells)
    assert len(failures) == 1
    assert failures[0].startswith("20000 x 128 x 8, tied: ")
    assert "0.31 > target 0.3" in failures[0]
    assert bench_gmm.report(cells, quick=False, check_requested=True) == 1


def test_the_headline_cell_has_its_own_tighter_target(bench_gmm):
    # 0.19 passes every other cell's 0.30 but not the headline's 0.18
    failures = bench_gmm.check(grid(bench_gmm, ratio=0.19, headline_ratio=0.19))
    assert failures == ["100000 x 16 x 16, full: 0.190 s / 1.000 s = 0.19 > target 0.18"]


@pytest.mark.parametrize("difference", [1e-3, np.nan])
def test_means_that_disagree_fail_even_in_a_quick_run(bench_gmm, difference):
    cells = grid(bench_gmm, ratio=0.1, headline_ratio=0.1)
    cells[0] = cells[0]._replace(difference=difference)
    for quick in (False, True):
        failures = bench_gmm.check(cells, speed=not quick)
        assert len(failures) == 1 and "the means differ" in failures[0]
        assert bench_gmm.report(cells, quick=quick, check_requested=True) == 1


def test_a_quick_run_does_not_check_the_speed_targets(bench_gmm):
    cells = grid(bench_gmm, ratio=0.9, headline_ratio=0.9)
    assert bench_gmm.check(cells, speed=False) == []
    assert bench_gmm.report(cells, quick=True, check_requested=True) == 0


def test_without_check_a_failing_grid_still_exits_zero(bench_gmm, capsys):
    assert bench_gmm.report(grid(bench_gmm, 0.9, 0.9), quick=False, check_requested=False) == 0
    assert "would fail --check: 100000 x 16 x 16, full" in capsys.readouterr().out


@pytest.mark.parametrize("our_seconds, status", [(0.2, 0), (0.4, 1)])
def test_main_with_check_returns_the_status_of_the_made_up_timings(bench_gmm, monkeypatch,
                                                                   capsys, our_seconds, status):
    """The whole script, its fits replaced by made-up timings: scikit-learn 1 s, ours
    ``our_seconds``, the same means."""
    def made_up_fit(model_class, X, covariance_type, start, dispatch=False,
                    n_iter=bench_gmm.N_ITER):
        seconds = 1.0 if model_class.__module__.startswith("sklearn") else our_seconds
        return seconds, types.SimpleNamespace(means_=start["means_init"])

    monkeypatch.setattr(bench_gmm, "timed_fit", made_up_fit)
    assert bench_gmm.main(["--check", "--repeats", "1", "--shape", "400x3x2"]) == status
    captured = capsys.readouterr()
    assert captured.out.count("| 400 x 3 x 2 |") == 1
    assert captured.err.count("FAIL 400 x 3 x 2, ") == 4 * status
