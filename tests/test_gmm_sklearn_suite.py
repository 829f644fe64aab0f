"""scikit-learn's own test_gaussian_mixture.py passes against our GaussianMixture: at least
95 % of the tests that use the public API, plain and under array-API dispatch (NumPy,
array_api_strict, PyTorch on the CPU). See tests/sklearn_suite.py for what is counted.

The two known plain failures, kept on purpose:
* test_check_weights matches a message that labels the minimum "max value" and the maximum
  "min value"; ours names them the right way round.
* test_gaussian_mixture_setting_best_params (reg_covar=0) leaves two components with no
  responsibility, so a variance of exactly 0; ours reports them as collapsed, where
  scikit-learn keeps variances of ~1e-300 made of underflowed responsibilities.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
import sklearn_suite

MIN_PASS_RATE = 0.95


@pytest.fixture(scope="module")
def outcomes():
    # The two parts run side by side, each in its own process (the array-API one needs
    # SCIPY_ARRAY_API=1 before SciPy is imported).
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(("plain", "array API"), pool.map(sklearn_suite.run_part, (False, True))))


@pytest.mark.parametrize("part, minimum_counted", [("plain", 45), ("array API", 70)])
def test_sklearn_suite_passes(outcomes, part, minimum_counted):
    passed, counted, failed, _ = sklearn_suite.count(outcomes[part])
    assert counted >= minimum_counted, f"only {counted} tests ran: is the harness broken?"
    assert passed / counted >= MIN_PASS_RATE, f"{part}: {passed} of {counted}; failed: {failed}"
