"""Build the book: the six notebooks, executed, and the API reference, into ``site/``.

    python scripts/build_book.py                 # execute every notebook, then build (5-7 min on 2 cores)
    python scripts/build_book.py --no-execute    # the notebooks as committed, without outputs (~20 s)

Steps, none of which touches the network. The pages are put together in a staging folder
(``build/book/`` by default), so that ``docs/`` holds only what is committed:

1. ``docs/`` is copied to ``STAGE/docs/``.
2. Each ``notebooks/0*.ipynb`` is executed top to bottom in ``notebooks/`` (where its helpers
   ``diagrams.py`` and ``exercises.py`` live) and written to ``STAGE/docs/notebooks/``. A cell
   that raises stops the build. The interactive controls (ipywidgets) need a running kernel;
   in the book each is replaced by a note saying so, next to the static figure the notebook
   draws. With ``--no-execute`` the notebooks are copied as committed.
3. MathJax 2.7 is copied from the ``jupyter-server-mathjax`` package into
   ``STAGE/docs/assets/mathjax/``, with the book's settings (``docs/javascripts/mathjax-book.js``),
   so that a page typesets its maths from the site itself.
4. ``mkdocs build --strict`` renders ``mkdocs.yml`` (through ``STAGE/mkdocs.yml``, which
   inherits it and points at the staged pages): a broken link, a missing page or a reference
   that does not resolve fails the build.

Needs the ``docs`` extra: ``pip install -e ".[torch,notebooks,docs]"``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DOCS = ROOT / "docs"
MATHJAX_SETTINGS = DOCS / "javascripts" / "mathjax-book.js"

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    '<p class="book-widget-note"><em>Interactive controls (ipywidgets) appear here when the '
    "notebook runs in Jupyter; open the notebook in JupyterLab to use them.</em></p>"
)


def replace_widgets(notebook: nbformat.NotebookNode) -> int:
    """Swap the widget outputs for a note, one per cell; return how many were swapped.

    A widget's output holds only a reference to a kernel-side object and its ``repr``; with no
    kernel there is nothing to draw, and the ``repr`` (``HBox(children=(...))``) reads as noise.
    """
    note = nbformat.v4.new_output("display_data", data={"text/html": WIDGET_NOTE, "text/plain": ""})
    swapped = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        widgets = [output for output in cell.outputs if WIDGET_VIEW in output.get("data", {})]
        if widgets:
            first = cell.outputs.index(widgets[0])
            kept = [output for output in cell.outputs if WIDGET_VIEW not in output.get("data", {})]
            cell.outputs = kept[:first] + [note] + kept[first:]
            swapped += len(widgets)
    notebook.metadata.pop("widgets", None)  # the state would ask for a widget renderer online
    return swapped


def execute(source: Path, target: Path, timeout: int) -> str:
    """Run ``source`` top to bottom in its folder and write the result to ``target``."""
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", store_widget_state=False,
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    swapped = replace_widgets(notebook)
    nbformat.write(notebook, target)
    return (f"{source.name}: executed in {time.perf_counter() - start:.0f} s, "
            f"{swapped} widget outputs replaced by a note")


def stage_notebooks(target: Path, run: bool, jobs: int, timeout: int) -> None:
    """Write the book's copies of the notebooks into ``target``, executed or as committed."""
    target.mkdir(parents=True)
    sources = sorted(NOTEBOOKS.glob("0*.ipynb"))
    if not run:
        for source in sources:
            shutil.copy2(source, target / source.name)
        print(f"copied {len(sources)} notebooks without executing them", flush=True)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = [pool.submit(execute, s, target / s.name, timeout) for s in sources]
        for finished in runs:
            print(finished.result(), flush=True)


def stage_mathjax(target: Path) -> None:
    """Copy MathJax from jupyter-server-mathjax into ``target``, with the book's settings."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        sys.exit('MathJax comes from jupyter-server-mathjax: pip install -e ".[docs]"')
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", target)
    (target / "config" / "local").mkdir(exist_ok=True)
    shutil.copy2(MATHJAX_SETTINGS, target / "config" / "local" / "book.js")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-execute", action="store_true",
                        help="render the notebooks as committed (no outputs): a quick check of "
                             "links, references and the API pages")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks executed at the same time (default 1)")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds one cell may run (default 600)")
    parser.add_argument("--site-dir", type=Path, default=ROOT / "site",
                        help="where the site goes (default site/)")
    parser.add_argument("--stage-dir", type=Path, default=ROOT / "build" / "book",
                        help="where the pages are put together (default build/book/, emptied first)")
    args = parser.parse_args(argv)

    stage = args.stage_dir.resolve()
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(DOCS, stage / "docs")
    stage_notebooks(stage / "docs" / "notebooks", run=not args.no_execute, jobs=args.jobs,
                    timeout=args.timeout)
    stage_mathjax(stage / "docs" / "assets" / "mathjax")
    # Relative paths in a config are read from the config's own folder: the staged pages.
    (stage / "mkdocs.yml").write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: docs\nsite_dir: {args.site_dir.resolve()}\n")
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
             "--config-file", str(stage / "mkdocs.yml")]
    # PYTHONPATH: mkdocstrings reads em_tutorial's source from this checkout, however it is
    # installed. NO_MKDOCS_2_WARNING: Material's banner about its successor, on every build.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(build, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
