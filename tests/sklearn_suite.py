"""scikit-learn's own GaussianMixture tests, run against em_tutorial.gmm.GaussianMixture.

Runs ``sklearn/mixture/tests/test_gaussian_mixture.py`` from the installed scikit-learn in
a subprocess, with ``sklearn.mixture.GaussianMixture`` replaced by ours before the file is
imported (this module is also the pytest plugin that does the replacing), and counts the
outcomes. Two parts:

* plain: every test but the array-API ones;
* array API: the array-API tests with ``SCIPY_ARRAY_API=1`` (it must be set before SciPy is
  imported, hence the subprocess) for NumPy, ``array_api_strict`` and PyTorch on the CPU.
  CuPy and CUDA need a GPU; they are not run here.

Not counted: tests that call scikit-learn's private ``_initialize`` or mock its private
functions (they test scikit-learn's internals, not the estimator's behaviour), and the test
that expects a NotImplementedError for the k-means initialisations under array-API dispatch
(ours supports them).

Run ``python tests/sklearn_suite.py`` for the counts; ``tests/test_gmm_sklearn_suite.py``
asserts the pass rates.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

NOT_COUNTED = {
    "test_gaussian_mixture_raises_where_array_api_not_implemented":
        "expects k-means initialisations to be refused under array-API dispatch",
}
ARRAY_API_SELECTION = "array_api and (numpy or array_api_strict or (torch and cpu))"


def pytest_configure(config):
    """As a pytest plugin: put our estimator where scikit-learn's test file imports it from."""
    import sklearn.mixture

    from em_tutorial.gmm import GaussianMixture

    sklearn.mixture.GaussianMixture = GaussianMixture


def sklearn_test_file():
    """The installed scikit-learn's ``mixture/tests/test_gaussian_mixture.py``."""
    import sklearn

    return Path(sklearn.__file__).parent / "mixture" / "tests" / "test_gaussian_mixture.py"


def tests_on_internals(path):
    """{test name: reason} for tests that call private ``_initialize`` or mock internals."""
    reasons = {}
    source = path.read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            body = ast.get_source_segment(source, node)
            if "._initialize(" in body:
                reasons[node.name] = "calls the private _initialize"
            elif "Mock(" in body:
                reasons[node.name] = "mocks a private function"
    return reasons


def run_part(array_api):
    """Run one part; return {test id: "passed" | "failed" | "skipped"}."""
    path = sklearn_test_file()
    selection = ARRAY_API_SELECTION if array_api else "not array_api"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    if array_api:
        env["SCIPY_ARRAY_API"] = "1"
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.xml"
        # An ini file of its own: otherwise pytest takes the first one above the test file,
        # which is this project's when the virtual environment lives inside the checkout (as
        # in CI) and none when it does not. The project's warning filter is applied in both.
        ini = Path(scratch) / "pytest.ini"
        ini.write_text("[pytest]\nfilterwarnings = error::RuntimeWarning:em_tutorial.*\n")
        subprocess.run(
            [sys.executable, "-m", "pytest", str(path), "-q", "-p", "sklearn_suite",
             "-p", "no:cacheprovider", "-c", str(ini), f"--confcutdir={path.parents[2]}",
             "-k", selection, f"--junitxml={report}"],
            cwd=scratch, env=env, capture_output=True, text=True, check=False,
        )
        cases = ElementTree.parse(report).getroot().iter("testcase")
        return {case.get("name"): _outcome(case) for case in cases}


def _outcome(case):
    if case.find("skipped") is not None:
        return "skipped"
    if case.find("failure") is not None or case.find("error") is not None:
        return "failed"
    return "passed"


def count(outcomes):
    """(passed, counted, failed names, not counted {name: reason})."""
    excluded = dict(NOT_COUNTED, **tests_on_internals(sklearn_test_file()))
    passed, failed, not_counted = 0, [], {}
    for name, outcome in sorted(outcomes.items()):
        function = name.split("[")[0]
        if function in excluded:
            not_counted[name] = excluded[function]
        elif outcome == "passed":
            passed += 1
        elif outcome == "failed":
            failed.append(name)
    return passed, passed + len(failed), failed, not_counted


def main():
    for label, array_api in (("plain", False), ("array API", True)):
        passed, counted, failed, not_counted = count(run_part(array_api))
        print(f"{label}: {passed} of {counted} pass ({len(not_counted)} not counted)")
        for name in failed:
            print(f"  failed: {name}")
        for name, reason in not_counted.items():
            print(f"  not counted: {name} ({reason})")


if __name__ == "__main__":
    main()
