"""environment.yml (conda) and pyproject.toml (pip) must install the same packages."""

import re
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


def test_package_imports_without_torch_or_cupy():
    import em_tutorial

    assert em_tutorial.__version__
