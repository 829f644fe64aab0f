"""The notebooks: each ``.ipynb`` is paired with a jupytext percent-format ``.py``, committed clean.

The ``.py`` file is the one to review and edit; ``jupytext --sync notebooks/*.py`` regenerates
the ``.ipynb``. These tests check, without executing anything, that the two halves of every pair
hold the same cells and that no outputs were committed. Executing the notebooks is nbmake's job
(``python -m pytest --nbmake notebooks/``).
"""

import json
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext", reason="jupytext is in the 'dev' and 'notebooks' extras")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRED_FORMATS = "ipynb,py:percent"
SCRIPTS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(path):
    """(type, source, tags) of every cell, as jupytext reads the file."""
    notebook = jupytext.read(path)
    return [
        (cell.cell_type, cell.source, tuple(cell.metadata.get("tags", ())))
        for cell in notebook.cells
    ]


def test_the_series_is_there():
    numbers = [p.name[:2] for p in SCRIPTS]
    assert numbers == [f"{i:02d}" for i in range(1, 7)], f"expected notebooks 01..06, got {numbers}"


def test_every_notebook_has_both_halves():
    scripts = {p.stem for p in SCRIPTS}
    ipynbs = {p.stem for p in IPYNBS}
    assert scripts == ipynbs, (
        f"unpaired: .py without .ipynb {sorted(scripts - ipynbs)}, "
        f".ipynb without .py {sorted(ipynbs - scripts)}; run `jupytext --sync notebooks/*.py`"
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_pair_is_in_sync(script):
    ipynb = script.with_suffix(".ipynb")
    from_script, from_ipynb = _cells(script), _cells(ipynb)
    assert len(from_script) == len(from_ipynb), (
        f"{script.name} has {len(from_script)} cells, {ipynb.name} has {len(from_ipynb)}: "
        "run `jupytext --sync notebooks/*.py`"
    )
    for index, (a, b) in enumerate(zip(from_script, from_ipynb)):
        assert a == b, f"cell {index} differs between {script.name} and {ipynb.name}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_pairing_is_declared(script):
    for path in (script, script.with_suffix(".ipynb")):
        formats = jupytext.read(path).metadata.get("jupytext", {}).get("formats")
        assert formats == PAIRED_FORMATS, f"{path.name}: jupytext formats is {formats!r}"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_committed_without_outputs(ipynb):
    # Read the raw JSON: what is on disk is what gets committed.
    notebook = json.loads(ipynb.read_text(encoding="utf-8"))
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{ipynb.name} cell {index} has outputs"
        assert cell.get("execution_count") is None, f"{ipynb.name} cell {index} has a count"
    assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_gpu_cells_are_tagged_and_guarded(script):
    """A cell that touches the GPU is tagged ``gpu`` and runs only where a GPU is present."""
    for cell_type, source, tags in _cells(script):
        if cell_type != "code":
            continue
        touches_gpu = "cupy" in source or "to_gpu(" in source or "to_device(" in source
        if "gpu" in tags or touches_gpu:
            assert "gpu" in tags, f"{script.name}: untagged GPU cell:\n{source}"
            assert "gpu_available()" in source, f"{script.name}: unguarded GPU cell:\n{source}"


def _cell_metadata(path):
    return [(cell.cell_type, cell.metadata) for cell in jupytext.read(path).cells]


# The lessons; the training notebook (05) is a run, with its own conventions.
LESSONS = [p for p in SCRIPTS if not p.name.startswith("05_")]


@pytest.mark.parametrize("script", LESSONS, ids=lambda p: p.stem)
def test_exercises_come_with_hidden_checks(script):
    """Two or three exercises, each followed by a check cell whose source is hidden."""
    cells = _cell_metadata(script)
    exercises = [i for i, (_, meta) in enumerate(cells) if "exercise" in meta.get("tags", ())]
    assert 2 <= len(exercises) <= 3, f"{script.name}: {len(exercises)} exercise cells, want 2-3"
    for index in exercises:
        following = [meta for kind, meta in cells[index + 1 :] if kind == "code"][:1]
        assert following and "check" in following[0].get("tags", ()), (
            f"{script.name}: exercise cell {index} is not followed by a code cell tagged 'check'"
        )
        assert following[0].get("jupyter", {}).get("source_hidden") is True, (
            f"{script.name}: the check after exercise cell {index} is not hidden"
        )


@pytest.mark.parametrize("script", LESSONS, ids=lambda p: p.stem)
def test_no_source_listings(script):
    """Equations are written inline and asserted equal to the package, not printed as source."""
    for cell_type, source, _ in _cells(script):
        if cell_type == "code":
            assert "inspect.getsource" not in source, f"{script.name} prints source:\n{source}"
