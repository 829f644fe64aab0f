"""Packaging: conda and pip install the same packages; the NumPy stages need no torch or CuPy."""

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# conda-forge names that differ from the PyPI names.
CONDA_TO_PIP = {"pytorch": "torch", "cupy": "cupy-cuda12x"}
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra}
    return names


def _environment_names():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip: section installs the package itself
            assert dep["pip"] == ["-e ."], "the pip section should only install em_tutorial"
            continue
        name = _name(dep)
        if name not in NOT_PACKAGES:
            names.add(CONDA_TO_PIP.get(name, name))
    return names


def test_environment_yml_matches_pyproject():
    pip_names, conda_names = _pyproject_names(), _environment_names()
    assert pip_names - conda_names == set(), "in pyproject.toml but not environment.yml"
    assert conda_names - pip_names == set(), "in environment.yml but not pyproject.toml"


# Run in a fresh interpreter whose imports of torch and cupy fail, as on a machine without them.
# A meta-path finder rather than sys.modules[name] = None: array_api_compat treats a name
# present in sys.modules as imported and would then try it.
BLOCK_TORCH_AND_CUPY = textwrap.dedent("""
    import importlib.abc
    import sys

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "cupy"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Missing())
    for blocked in ("torch", "cupy"):
        try:
            __import__(blocked)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{blocked} was importable: the block does not work")
""")

NUMPY_STAGES = textwrap.dedent("""
    import numpy as np

    import em_tutorial
    from em_tutorial import backend, ema, ema_fast, ema_validation, gmm, gpu, non_local

    rng = np.random.default_rng(0)
    x, mu = rng.standard_normal((20, 3)), rng.standard_normal((4, 3))  # (N, C), (K, C)
    z = ema.em_attention(x, mu, n_iter=2)[0]  # (N, K)
    assert np.allclose(z, ema_fast.em_attention_fast(x, mu, n_iter=2)[0])
    assert np.allclose(non_local.non_local_attention(x).sum(axis=-1), 1.0)  # (N, N) rows
    unit = ema.l2_normalize(mu)  # the mixture whose E-step is A_E
    assert np.allclose(gmm.e_step(x, **ema.spherical_gmm_parameters(unit)),
                       ema.attention_e_step(x, unit))
    ema_validation.check_n_iter(3)
    assert not backend.gpu_available() and gpu.gpu_unavailable_reason().startswith("CuPy is not")
    assert not any(name.split(".")[0] in ("torch", "cupy") for name in sys.modules)
    print("ok", em_tutorial.__version__)
""")


def _run_without_torch_or_cupy(code):
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH_AND_CUPY + code],
                          capture_output=True, text=True, timeout=120)


def test_numpy_stages_import_and_compute_without_torch_or_cupy():
    result = _run_without_torch_or_cupy(NUMPY_STAGES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok 0.1.0")


def test_the_block_catches_a_stage_that_imports_torch():
    """The check above can fail: the PyTorch stage imports torch and must be stopped."""
    result = _run_without_torch_or_cupy("import em_tutorial.nn")
    assert result.returncode != 0
    assert "No module named 'torch' (blocked by the test)" in result.stderr
